//! `HostFs` specifics: nothing outside the directory is reachable.

use std::os::unix::fs::symlink;

use super::util::*;
use crate::{Error, FileKind, FileSystem, HostFs};

#[test]
fn host_stays_inside() {
    let tmp = TempDir::new("host");
    let root = tmp.join("root");
    std::fs::create_dir(&root).unwrap();
    populate(&root, false);
    std::fs::write(tmp.join("secret"), b"outside").unwrap();
    symlink("../secret", root.join("escape")).unwrap();
    symlink(tmp.path(), root.join("escape-dir")).unwrap();
    let fs = HostFs::new(&root).unwrap();
    assert!(fs.describe().starts_with("host0:/"));

    // `..` stops at the root, as `/..` does.
    assert!(matches!(
        fs.read_file("/../secret"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        fs.read_file("../../../secret"),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(fs.read_file("/../../hello.txt").unwrap(), b"hello, world\n");
    // Symlinks leading out are refused, naming the path.
    for p in ["/escape", "/escape-dir/secret"] {
        let e = fs.read_file(p).unwrap_err();
        assert!(
            e.to_string().contains(p) && e.to_string().contains("outside"),
            "{p}: {e}"
        );
    }
    // An absolute symlink means the host's `/`, as it does to userboot's
    // host.c: here a file that does not exist on the host, or is refused.
    assert!(fs.read_file("/abs").is_err());
    assert!(fs.read_dir("/escape-dir").is_err());
    // Symlinks inside are followed.
    assert_eq!(fs.stat("/boot/kernel").unwrap().kind, FileKind::Dir);
    assert_eq!(fs.read_file("/sub/up").unwrap(), b"hello, world\n");
    let e = HostFs::new(tmp.join("nope")).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let e = HostFs::new(root.join("hello.txt")).unwrap_err();
    assert!(matches!(e, Error::NotDir { .. }), "{e}");
}
