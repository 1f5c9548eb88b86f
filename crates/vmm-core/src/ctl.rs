//! The control channel from bhyvectl to the bhyve process running an
//! instance: one JSON request line, one JSON response line, over the
//! instance's `ctl.sock`.  FreeBSD needs none (vmm.ko answers ioctls for a
//! running VM); here the running process is the only one that can reach the
//! live KVM vCPUs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::vcpu_state::VcpuState;
use crate::vm::Suspend;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Live vCPU state and counters.
    GetState,
    /// `--force-reset`, `--force-poweroff`.
    Suspend { how: Suspend },
    /// `--inject-nmi`.
    InjectNmi { vcpu: usize },
    /// `--destroy` of a running VM: stop first.
    Destroy,
    /// `--send-break=comN`: a BREAK on that COM port's line (how a serial
    /// console asks a Linux guest for SysRq).
    UartBreak { port: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Externally tagged: an internally tagged enum buffers its content and then
// cannot read the integer map keys of `VcpuState::msrs` back.
#[serde(rename_all = "snake_case")]
pub enum Response {
    State {
        vcpus: Vec<VcpuState>,
        stats: Vec<Vec<(String, u64)>>,
    },
    Ok,
    Err {
        why: String,
    },
}

/// How long a client waits for the running process.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Send one request to the process running `inst`.
pub fn request(inst: &Instance, req: &Request) -> Result<Response> {
    let err = |why: String| Error::Ctl {
        name: inst.name().to_string(),
        why,
    };
    let path = inst.ctl_path();
    let mut s = UnixStream::connect(&path)
        .map_err(|e| err(format!("connecting to {}: {e}", path.display())))?;
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| err(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| err(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| err(format!("sending: {e}")))?;
    let mut resp = String::new();
    BufReader::new(s)
        .read_line(&mut resp)
        .map_err(|e| err(format!("no answer: {e}")))?;
    if resp.is_empty() {
        return Err(err("the running process closed the channel".into()));
    }
    serde_json::from_str(&resp).map_err(|e| err(format!("bad answer: {e}")))
}

/// Serve requests on `path` from a background thread until the process
/// exits.  A stale socket from a killed runner is replaced.
pub fn serve(
    path: &Path,
    handler: Arc<dyn Fn(Request) -> Response + Send + Sync>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(TIMEOUT));
                let mut line = String::new();
                let Ok(clone) = conn.try_clone() else {
                    continue;
                };
                if BufReader::new(clone).read_line(&mut line).is_err() {
                    continue;
                }
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handler(req),
                    Err(e) => Response::Err {
                        why: format!("bad request: {e}"),
                    },
                };
                if let Ok(mut out) = serde_json::to_vec(&resp) {
                    out.push(b'\n');
                    let _ = conn.write_all(&out);
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::tests::with_vmm_dir;

    #[test]
    fn round_trip_and_errors() {
        with_vmm_dir(|_| {
            let i = Instance::create("ctl0").unwrap();
            let e = request(&i, &Request::GetState).unwrap_err();
            assert!(e.to_string().contains("ctl0"), "{e}");
            serve(
                &i.ctl_path(),
                Arc::new(|r| match r {
                    Request::InjectNmi { vcpu: 0 } => Response::Ok,
                    _ => Response::Err { why: "no".into() },
                }),
            )
            .unwrap();
            assert_eq!(
                request(&i, &Request::InjectNmi { vcpu: 0 }).unwrap(),
                Response::Ok
            );
            let mut st = VcpuState::default();
            st.msrs
                .insert(crate::vcpu_state::msr::LSTAR, 0xffff_8000_0000_1000);
            let resp = Response::State {
                vcpus: vec![st],
                stats: vec![vec![("exits".into(), 3)]],
            };
            let line = serde_json::to_string(&resp).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), resp);
            assert!(matches!(
                request(&i, &Request::Destroy).unwrap(),
                Response::Err { .. }
            ));
        });
    }
}
