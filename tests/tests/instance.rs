//! Issue 2: instances that outlive processes, driven through bhyvectl.

use bhyve_rs_tests::*;

#[test]
fn create_set_get_destroy() {
    let d = vmm_dir();
    let _g = VmGuard::new("t0");
    let o = run("bhyvectl", &["--vm=t0", "--create"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("t0").is_dir(), "ls $VMM_DIR shows t0");
    let o = run("bhyvectl", &["--vm=t0", "--create"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("t0 already exists"), "{}", stderr(&o));
    let o = run("bhyvectl", &["--vm=t0", "--set-rip=0x1000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run("bhyvectl", &["--vm=t0", "--get-rip"]);
    assert_eq!(stdout(&o), "rip[0]\t\t0x0000000000001000\n");
    let o = run("bhyvectl", &["--list"]);
    assert!(
        stdout(&o).lines().any(|l| l.starts_with("t0 ")),
        "{}",
        stdout(&o)
    );
    let o = run("bhyvectl", &["--list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().any(|x| x["name"] == "t0"));
    let o = run("bhyvectl", &["--vm=t0", "--destroy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!d.join("t0").exists());
    let o = run("bhyvectl", &["--vm=t0", "--destroy"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("VM:t0 is not created."),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_names_and_missing_vm() {
    let o = run("bhyvectl", &["--vm=../evil", "--create"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid VM name"), "{}", stderr(&o));
    let o = run("bhyvectl", &["--vm=nosuch", "--get-all"]);
    assert!(stderr(&o).contains("VM:nosuch is not created."));
    let o = run("bhyvectl", &["--get-rip"]);
    assert!(stderr(&o).contains("--vm=NAME is required"));
    let o = run("bhyvectl", &["--vm=x", "--set-rip=banana"]);
    assert_ne!(o.status.code(), Some(0));
}

#[test]
fn descriptors_and_memory_queries() {
    let _g = VmGuard::new("t1");
    assert!(
        run("bhyvectl", &["--vm=t1", "--create", "--set-mem=4608"])
            .status
            .success()
    );
    let o = run(
        "bhyvectl",
        &[
            "--vm=t1",
            "--set-desc-cs",
            "--desc-base=0x1000",
            "--desc-limit=0xffff",
            "--desc-access=0x209b",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        "bhyvectl",
        &["--vm=t1", "--get-desc-cs", "--get-lowmem", "--get-highmem"],
    );
    let out = stdout(&o);
    assert!(
        out.contains("cs desc[0]\t0x0000000000001000/0x0000ffff/0x0000209b"),
        "{out}"
    );
    assert!(
        out.contains("lowmem\t\t0x0000000000000000/3221225472"),
        "{out}"
    );
    assert!(
        out.contains("highmem\t\t0x0000000100000000/1610612736"),
        "{out}"
    );
    let o = run("bhyvectl", &["--vm=t1", "--get-memmap"]);
    assert!(stdout(&o).contains("100000000   1536M"), "{}", stdout(&o));
}
