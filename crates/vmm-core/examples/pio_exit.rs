//! Port-I/O exit cost, for bench/bhyve.sh.
//!
//! `pio_exit raw N`: a real-mode guest runs N `out 0x80, al` on a bare
//! kvm-ioctls VM whose loop does nothing but re-enter — the host's floor.
//! Prints microseconds per exit.
//!
//! `pio_exit setup NAME N`: create instance NAME (1 GiB) whose BSP runs the
//! same N OUTs and then powers off through PM1 (S5), for `bhyve` to run.
//! With N = 0 it prints one byte on COM1 first (the start-up probe).

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::instance::Instance;
use vmm_core::vcpu_state::{SegDesc, Segment};

const CODE_AT: u64 = 0x1000;

/// `mov cx, n; l: out 0x80, al; loop l` then S5 (`out 0x404, 0x3400`), hlt.
/// With n = 0: `out 0x3f8, '!'` instead of the loop.
fn guest(n: u16) -> Vec<u8> {
    let mut c = Vec::new();
    if n == 0 {
        c.extend_from_slice(&[0xba, 0xf8, 0x03, 0xb0, b'!', 0xee]);
    } else {
        let b = n.to_le_bytes();
        c.extend_from_slice(&[0xb9, b[0], b[1], 0xe6, 0x80, 0xe2, 0xfc]);
    }
    c.extend_from_slice(&[0xba, 0x04, 0x04, 0xb8, 0x00, 0x34, 0xef, 0xf4]);
    c
}

fn raw(n: u16) -> Result<(), Box<dyn std::error::Error>> {
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    let size = 1 << 20;
    // SAFETY: an anonymous private mapping we own for the life of the VM.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let code = guest(n);
    // SAFETY: the code fits in the 1 MiB mapping at offset 0x1000.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (mem as *mut u8).add(CODE_AT as usize),
            code.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping outlives the VM (the process exits first).
    unsafe { vm.set_user_memory_region(region)? };
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_AT;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    let t = Instant::now();
    let mut exits = 0u64;
    loop {
        match vcpu.run()? {
            VcpuExit::IoOut(0x80, _) => exits += 1,
            VcpuExit::IoOut(..) | VcpuExit::Hlt => break,
            e => return Err(format!("unexpected exit {e:?}").into()),
        }
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / exits.max(1) as f64;
    println!("{us:.2}");
    Ok(())
}

fn setup(name: &str, n: u16) -> Result<(), Box<dyn std::error::Error>> {
    let inst = Instance::create(name)?;
    inst.setup_memory(1 << 30)?;
    let (_, gm) = inst.map_memory()?;
    gm.write_slice(&guest(n), GuestAddress(CODE_AT))?;
    inst.update(|st| {
        let v = &mut st.vcpus[0];
        v.cs = Segment {
            sel: 0,
            desc: SegDesc {
                base: 0,
                limit: 0xffff,
                access: 0x9b,
            },
        };
        v.rip = CODE_AT;
        Ok(())
    })?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["raw", n] => n.parse().map_err(Into::into).and_then(raw),
        ["setup", name, n] => n.parse().map_err(Into::into).and_then(|n| setup(name, n)),
        _ => Err("usage: pio_exit raw N | pio_exit setup NAME N".into()),
    };
    if let Err(e) = r {
        eprintln!("pio_exit: {e}");
        std::process::exit(1);
    }
}
