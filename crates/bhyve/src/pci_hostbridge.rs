//! The host bridge (`pci_hostbridge.c`): an identity in config space and
//! a PCI Express capability of type root port; no BARs, no interrupt.

use std::collections::BTreeMap;

use crate::pci_emul::{PciError, PciFunction, Plain};

/// NetApp's IDs for `hostbridge`, made-up AMD ones for `amd_hostbridge`.
pub const HOSTBRIDGE_IDS: (u16, u16) = (0x1275, 0x1275);
pub const AMD_HOSTBRIDGE_IDS: (u16, u16) = (0x1022, 0x7432);
/// Bridge, host.
pub const CLASS_BRIDGE: u8 = 0x06;
pub const SUBCLASS_HOST: u8 = 0x00;
/// PCIe device/port type of a root port.
const PCIEM_TYPE_ROOT_PORT: u8 = 0x4;

fn id(bdf: &str, opts: &BTreeMap<String, String>, key: &str, dflt: u16) -> Result<u16, PciError> {
    let Some(v) = opts.get(key) else {
        return Ok(dflt);
    };
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| PciError::Device {
        bdf: bdf.into(),
        why: format!("invalid {key} {v:?}"),
    })
}

/// The host bridge at `slot`/`func`; `vendor=` and `devid=` override
/// the IDs as in modern bhyve.
pub fn new(
    slot: u8,
    func: u8,
    amd: bool,
    opts: &BTreeMap<String, String>,
) -> Result<PciFunction, PciError> {
    let (emul, ids) = if amd {
        ("amd_hostbridge", AMD_HOSTBRIDGE_IDS)
    } else {
        ("hostbridge", HOSTBRIDGE_IDS)
    };
    let bdf = format!("0:{slot}:{func}");
    let ids = (
        id(&bdf, opts, "vendor", ids.0)?,
        id(&bdf, opts, "devid", ids.1)?,
    );
    let mut f = PciFunction::new(
        slot,
        func,
        emul,
        ids,
        (CLASS_BRIDGE, SUBCLASS_HOST, 0),
        Box::new(Plain),
    );
    f.add_pciecap(PCIEM_TYPE_ROOT_PORT)?;
    Ok(f)
}
