//! bhyve's machine on real KVM, checked from inside by the boot-contract
//! guest: ACPI and MP tables in guest memory, the PM timer, HPET and RTC
//! bhyve keeps in vmm.ko, COM1's interrupt, APs starting, and the exit
//! status of each way the guest leaves.

use std::process::{Command, Output, Stdio};

use bhyve_rs_tests::guest::{self, Exit, Expect, Report, Status};
use bhyve_rs_tests::*;

const MEM: u64 = 512 << 20;

/// Load the guest into `name` with `e`'s expectations and run bhyve's
/// standard machine (`-u`, host bridge, LPC, COM1 on stdio) on it with
/// `ncpus` vCPUs and `extra` options.
fn boot(name: &str, ncpus: u32, extra: &[&str], e: &Expect) -> (Output, Report) {
    load_guest(name, "512M", e);
    let n = ncpus.to_string();
    let mut args = vec!["-c", &n, "-m", "512M", "-u"];
    args.extend(["-s", "0,hostbridge", "-s", "31,lpc", "-l", "com1,stdio"]);
    args.extend(extra);
    args.push(name);
    let o = Command::new(bin("bhyve"))
        .args(&args)
        .env("VMM_DIR", vmm_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = guest::parse_report(&stdout(&o));
    (o, report)
}

/// Every check under `prefix` ran and passed (none skipped, at least one).
fn all_passed(r: &Report, prefix: &str) {
    let c = r.matching(prefix);
    assert!(!c.is_empty(), "no {prefix:?} checks reported");
    for c in c {
        assert_eq!(c.status, Status::Pass, "{} # {}", c.name, c.detail);
    }
}

/// The platform checks every run asks for.
fn machine(ncpus: u32) -> Expect {
    Expect::new()
        .memsize(MEM)
        .ncpus(ncpus)
        .acpi()
        .pmtimer()
        .hpet()
        .rtc_today()
        .uart_irq()
}

#[test]
fn one_cpu_machine_passes_every_platform_check() {
    let _g = VmGuard::new("mach1");
    let (o, r) = boot("mach1", 1, &[], &machine(1));
    let out = stdout(&o);
    r.assert_all_passed(&out);
    assert_eq!(o.status.code(), Some(1), "poweroff: {}", stderr(&o));
    for p in [
        "acpi:",
        "mptable:",
        "smp:",
        "pmtimer:",
        "hpet:",
        "rtc:",
        "uart irq:",
    ] {
        all_passed(&r, p);
    }
    r.assert_passed(&[
        "acpi: RSDP at 0xF2400, OEM ID \"BHYVE \"",
        "rtc: date is test.rtc (or the next day)",
        "rtc: power-on status A 0x20, B 0x02 (24h, BCD), D 0x80",
    ]);
}

/// PCI bus 0 through 0xcf8/0xcfc and ECAM: the host bridge, a PCI 16550
/// (BAR0 placed, INTx routed, listed in _PRT and the MP table) and the LPC
/// bridge with its PIRQ registers; nothing else.
#[test]
fn pci_bus_zero_as_bhyve_presents_it() {
    let _g = VmGuard::new("machpci");
    let e = Expect::new().memsize(MEM).acpi().pci(&[
        (0, 0, 0x1275, 0x1275),
        (2, 0, 0x131f, 0x2000),
        (31, 0, 0x8086, 0x7000),
    ]);
    let (o, r) = boot("machpci", 1, &["-s", "2,uart"], &e);
    r.assert_all_passed(&stdout(&o));
    assert_eq!(o.status.code(), Some(1), "poweroff: {}", stderr(&o));
    all_passed(&r, "pci:");
    all_passed(&r, "acpi:");
}

#[test]
fn four_cpus_in_madt_and_mp_table_and_aps_report_in() {
    let _g = VmGuard::new("mach4");
    let (o, r) = boot("mach4", 4, &[], &machine(4));
    r.assert_all_passed(&stdout(&o));
    assert_eq!(o.status.code(), Some(1), "poweroff: {}", stderr(&o));
    all_passed(&r, "smp:");
    r.assert_passed(&[
        "smp: MADT lists test.ncpus (4) enabled processors, APIC IDs 0..n-1",
        "smp: MP table lists test.ncpus (4) enabled processors, APIC IDs 0..n-1",
        "smp: exactly test.ncpus - 1 (3) APs reached long mode and reported in",
    ]);
}

#[test]
fn without_mp_table_y_only_the_mp_checks_fail() {
    let _g = VmGuard::new("machy");
    let (o, r) = boot("machy", 1, &["-Y"], &Expect::new().acpi());
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "poweroff: {}", stderr(&o));
    assert!(r.is_complete(), "{}\n{out}", r.describe_problems());
    let failed: Vec<_> = r.failures().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        failed,
        ["mptable: floating pointer \"_MP_\" in 0xF0000-0xFFFFF, checksum, length 1, revision 4"],
        "{out}"
    );
    assert_eq!(r.failures()[0].detail, "not found");
    all_passed(&r, "acpi:");
}

#[test]
fn exit_status_follows_how_the_guest_leaves() {
    for (how, status) in [(Exit::Reset, 0), (Exit::Halt, 2), (Exit::TripleFault, 3)] {
        let name = format!("mx{status}");
        let _g = VmGuard::new(&name);
        let (o, r) = boot(&name, 1, &[], &Expect::new().exit(how));
        r.assert_all_passed(&stdout(&o));
        assert_eq!(o.status.code(), Some(status), "{how:?}: {}", stderr(&o));
    }
}

/// `-p vcpu:hostcpu` pins each vCPU thread; the guest runs as before.
#[test]
fn pinned_vcpus_run() {
    let _g = VmGuard::new("machpin");
    let (o, r) = boot("machpin", 2, &["-p", "0:1", "-p", "1:0"], &machine(2));
    r.assert_all_passed(&stdout(&o));
    assert_eq!(o.status.code(), Some(1), "poweroff: {}", stderr(&o));
    all_passed(&r, "smp:");
}
