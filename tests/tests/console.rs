//! bhyve's first devices on real KVM: tiny hand-assembled real-mode guests
//! print on COM1, read COM1 input, power off through PM1a_CNT and reset
//! through 0xCF9 or the keyboard controller; bhyve under a pty leaves the
//! terminal as it found it.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bhyve_rs_tests::*;
use vmmapi::VmReg;

fn bhyve(args: &[&str]) -> Command {
    let mut c = Command::new(bin("bhyve"));
    c.args(args).env("VMM_DIR", vmm_dir());
    c
}

// Real-mode code pieces.
/// mov dx, port
fn mov_dx(port: u16) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![0xba, p[0], p[1]]
}
/// mov dx,0x3f8 then `mov al,c; out dx,al` per byte.
fn print(s: &[u8]) -> Vec<u8> {
    let mut v = mov_dx(0x3f8);
    for &c in s {
        v.extend_from_slice(&[0xb0, c, 0xee]);
    }
    v
}
/// PM1a_CNT = SLP_EN | SLP_TYP 5 (S5), then hlt.
fn poweroff() -> Vec<u8> {
    let mut v = mov_dx(0x404);
    v.extend_from_slice(&[0xb8, 0x00, 0x34, 0xef, 0xf4, 0xeb, 0xfd]);
    v
}

#[test]
fn hello_on_com1_then_s5_poweroff() {
    let mut code = print(b"hello\n");
    code.extend(poweroff());
    let _g = real_mode_vm("con0", &code);
    let o = bhyve(&["-m", "16M", "-s", "31,lpc", "-l", "com1,stdio", "con0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "hello\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(1), "poweroff: {}", stderr(&o));
    let l = run("bhyvectl", &["--vm=con0", "--list"]);
    assert!(stdout(&l).contains("exited: poweroff"), "{}", stdout(&l));
}

#[test]
fn reset_through_0xcf9_and_the_keyboard_controller() {
    // mov al,6; mov dx,0xcf9; out dx,al; hlt
    let mut code = vec![0xb0, 0x06];
    code.extend(mov_dx(0xcf9));
    code.extend_from_slice(&[0xee, 0xf4]);
    let _g = real_mode_vm("con1", &code);
    let o = bhyve(&["-m", "16M", "con1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "reset: {}", stderr(&o));
    drop(_g);
    // mov al,0xfe; out 0x64,al; hlt
    let _g = real_mode_vm("con2", &[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
    let o = bhyve(&["-m", "16M", "con2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "atkbdc reset: {}", stderr(&o));
}

#[test]
fn com1_input_is_echoed_2013_command_line() {
    // Poll LSR.DR, read RBR, write it back to THR, power off.
    let mut code = mov_dx(0x3fd);
    code.extend_from_slice(&[0xec, 0xa8, 0x01, 0x74, 0xfb]); // in; test al,1; jz
    code.extend(mov_dx(0x3f8));
    code.extend_from_slice(&[0xec, 0xee]); // in al,dx; out dx,al
    code.extend(poweroff());
    let _g = real_mode_vm("con3", &code);
    let mut child = bhyve(&["-A", "-I", "-m", "16", "-S", "31,uart,stdio", "con3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"Z").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "Z", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn com1_input_interrupt_reaches_the_guest() {
    // Program the 8259 (vectors 8-15, only IRQ 4 unmasked), enable the RX
    // interrupt, sti; hlt.  The IRQ 4 handler echoes the byte, powers off.
    let mut code = Vec::new();
    for (port, v) in [
        (0x20, 0x11),
        (0x21, 0x08),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xef),
    ] {
        code.extend_from_slice(&[0xb0, v, 0xe6, port]);
    }
    code.extend(mov_dx(0x3f9));
    code.extend_from_slice(&[0xb0, 0x01, 0xee, 0xfb, 0xf4, 0xeb, 0xfd]);
    let isr = 0x1000 + code.len() as u16;
    code.extend(mov_dx(0x3f8));
    code.extend_from_slice(&[0xec, 0xee]);
    code.extend(poweroff());
    let _g = real_mode_vm("con7", &code);
    let mut ctx = vmmapi::vm_open("con7").unwrap();
    // IVT entry of vector 0x0c (IRQ 4): 0000:isr.
    let mut ivt = isr.to_le_bytes().to_vec();
    ivt.extend_from_slice(&[0, 0]);
    ctx.vm_copyin(0x0c * 4, &ivt).unwrap();
    ctx.vm_set_register(0, VmReg::Rsp, 0x8000).unwrap();
    let mut child = bhyve(&["-m", "16M", "-s", "31,lpc", "-l", "com1,stdio", "con7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the guest time to reach hlt, so only the interrupt can wake it.
    std::thread::sleep(Duration::from_millis(300));
    child.stdin.as_mut().unwrap().write_all(b"Q").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "Q", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn fast_output_to_a_slow_reader_loses_nothing() {
    // 2 x 0xffff bytes 0,1,2,...: out dx,al; inc al; loop; dec bx; jnz.
    let mut code = mov_dx(0x3f8);
    code.extend_from_slice(&[
        0x30, 0xc0, // xor al,al
        0xbb, 0x02, 0x00, // mov bx,2
        0xb9, 0xff, 0xff, // outer: mov cx,0xffff
        0xee, 0xfe, 0xc0, 0xe2, 0xfb, // inner: out; inc al; loop inner
        0x4b, 0x75, 0xf5, // dec bx; jnz outer
    ]);
    code.extend(poweroff());
    let _g = real_mode_vm("con4", &code);
    let mut child = bhyve(&["-m", "16M", "-s", "31,lpc", "-l", "com1,stdio", "con4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the pipe fill so the guest has to wait for us.
    std::thread::sleep(Duration::from_millis(500));
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(out.len(), 2 * 0xffff);
    assert!(
        out.iter().enumerate().all(|(i, &b)| b == i as u8),
        "bytes out of order"
    );
}

/// A pty: (master, slave).
fn pty() -> (std::fs::File, std::fs::File) {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname on a fresh master fd we
    // own; ptsname's static buffer is copied at once.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt");
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m))
            .to_string_lossy()
            .into_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&name)
            .unwrap();
        (std::fs::File::from(master), slave)
    }
}

/// The settings that matter, comparable.
fn termios(f: &std::fs::File) -> (u32, u32, u32, u32, Vec<u8>) {
    // SAFETY: tcgetattr into a zeroed local struct on an open tty fd.
    let t = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
        t
    };
    (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_cc.to_vec())
}

fn bhyve_on_pty(name: &str, slave: &std::fs::File) -> std::process::Child {
    bhyve(&["-m", "16M", "-s", "31,lpc", "-l", "com1,stdio", name])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn terminal_restored_after_poweroff_and_after_sigterm() {
    let mut code = print(b"hello\n");
    code.extend(poweroff());
    let _g = real_mode_vm("con5", &code);
    let (mut master, slave) = pty();
    let before = termios(&slave);
    assert_ne!(before.3 & libc::ICANON, 0, "a fresh pty is cooked");
    let child = bhyve_on_pty("con5", &slave);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(termios(&slave), before, "after a normal exit");
    let mut got = [0u8; 6];
    master.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello\n", "raw: no CR added");
    drop(_g);

    // A spinning guest, stopped by SIGTERM before it enabled ACPI.
    let _g = real_mode_vm("con6", &[0xeb, 0xfe]);
    let child = bhyve_on_pty("con6", &slave);
    let t = Instant::now();
    while termios(&slave).3 & libc::ICANON != 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "never went raw");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.signal(), Some(libc::SIGTERM), "{}", stderr(&o));
    assert_eq!(termios(&slave), before, "after SIGTERM");
}

/// Once the guest enabled ACPI (0xa0 to SMI_CMD), SIGTERM presses the
/// power button: PM1 status shows PWRBTN_STS, the guest powers off, and
/// bhyve exits 1 instead of dying of the signal.
#[test]
fn sigterm_presses_the_power_button_after_acpi_enable() {
    // mov al,0xa0; out 0xb2,al; then print 'R' (ready)
    let mut code = vec![0xb0, 0xa0, 0xe6, 0xb2];
    code.extend(print(b"R"));
    // l: mov dx,0x400; in ax,dx; test ax,0x100; jz l
    code.extend(mov_dx(0x400));
    code.extend_from_slice(&[0xed, 0xa9, 0x00, 0x01, 0x74, 0xf7]);
    code.extend(poweroff());
    let _g = real_mode_vm("con_pwr", &code);
    let mut child = bhyve(&["-m", "16M", "-s", "31,lpc", "-l", "com1,stdio", "con_pwr"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    out.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"R");
    // The guest waits for the button: it must still be running.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "guest did not wait for the button"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(1), "power button -> S5 -> exit 1: {st:?}");
}

/// Run `name` with COM1 on stdio and `flags`; the guest prints `want`
/// and powers off.
fn expect_com1_then_poweroff(name: &str, flags: &[&str], want: &str) {
    let mut args = vec!["-m", "16M", "-s", "31,lpc", "-l", "com1,stdio"];
    args.extend(flags);
    args.push(name);
    let o = bhyve(&args).stdin(Stdio::null()).output().unwrap();
    assert_eq!(stdout(&o), want, "{flags:?}: {}", stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{flags:?}: {}", stderr(&o));
}

/// An MSR KVM does not know: #GP by default (bhyve's x86.strictmsr), read
/// as 0 with -w. The guest prints R after the RDMSR, or G from its #GP
/// handler (IVT vector 13), then powers off.
#[test]
fn unknown_msr_faults_unless_w() {
    for (name, flags, want) in [("msr0", &[][..], "G"), ("msr1", &["-w"][..], "R")] {
        // mov ecx, 0x12345678; rdmsr; print R
        let mut code = vec![0x66, 0xb9, 0x78, 0x56, 0x34, 0x12, 0x0f, 0x32];
        code.extend(print(b"R"));
        code.extend(poweroff());
        let _g = real_mode_vm(name, &code);
        let mut handler = print(b"G");
        handler.extend(poweroff());
        let mut ctx = vmmapi::vm_open(name).unwrap();
        ctx.vm_copyin(0x1800, &handler).unwrap();
        ctx.vm_copyin(13 * 4, &[0x00, 0x18, 0x00, 0x00]).unwrap();
        expect_com1_then_poweroff(name, flags, want);
    }
}

/// -x: the local APIC starts in x2APIC mode (APIC_BASE.EXTD); -a or
/// nothing: xAPIC. The guest prints X or N after reading APIC_BASE.
#[test]
fn x2apic_mode_with_x() {
    for (name, flags, want) in [("x2a0", &[][..], "N"), ("x2a1", &["-x"][..], "X")] {
        // mov ecx,0x1b; rdmsr; test ah,4; mov al,'N'; jz +2; mov al,'X'
        let mut code = vec![0x66, 0xb9, 0x1b, 0, 0, 0, 0x0f, 0x32];
        code.extend_from_slice(&[0xf6, 0xc4, 0x04, 0xb0, b'N', 0x74, 0x02, 0xb0, b'X']);
        code.extend(mov_dx(0x3f8));
        code.push(0xee);
        code.extend(poweroff());
        let _g = real_mode_vm(name, &code);
        expect_com1_then_poweroff(name, flags, want);
    }
}

/// -D destroys the instance when the guest powers off; -e turns an access
/// to a port nobody emulates into an error (exit 4), which is otherwise
/// ignored (reads all ones).
#[test]
fn destroy_on_poweroff_and_strict_io() {
    let _g = real_mode_vm("dpo", &poweroff());
    let o = bhyve(&["-m", "16M", "-D", "dpo"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!exists("dpo"), "-D leaves no instance");

    // in al,0x99 (nothing there); then power off.
    let mut code = vec![0xe4, 0x99];
    code.extend(poweroff());
    let _g = real_mode_vm("eio", &code);
    let o = bhyve(&["-m", "16M", "eio"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "ignored without -e: {}",
        stderr(&o)
    );
    // A fresh instance: a run leaves the final vCPU state behind.
    let _g2 = real_mode_vm("eio2", &code);
    let o = bhyve(&["-m", "16M", "-e", "eio2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0x99"),
        "names the port: {}",
        stderr(&o)
    );
}
