//! bhyve's configuration tree (bhyve_config(5)): every command-line flag
//! sets `key=value` nodes, `-o key=value` and `-k file` set any node, and the
//! machine is built from the tree alone.  Both command-line generations map
//! onto it: the 2013 one (`-I`, `-S slot,emul` legacy slots) and today's.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    Usage(String),
    #[error("invalid -c {0:?}: {1}")]
    Cpus(String, &'static str),
    #[error("invalid memory size {0:?}")]
    Mem(String),
    #[error("invalid -s {0:?}: {1}")]
    Slot(String, String),
    #[error("-s {0:?}: slot {1} is already in use")]
    DupSlot(String, String),
    #[error("invalid -l {0:?}: {1}")]
    Lpc(String, &'static str),
    #[error("invalid -p {0:?}: expected vcpu:hostcpu")]
    Pin(String),
    #[error("invalid -o {0:?}: expected key=value")]
    Opt(String),
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}: {1}")]
    Value(String, String),
}

/// PCI bus, slot, function.
pub type Bdf = (u8, u8, u8);

/// The tree, flattened to dotted keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    nodes: BTreeMap<String, String>,
}

/// PCI emulations bhyve-rs provides (`-s help`).
pub const PCI_EMULATIONS: &[&str] = &[
    "hostbridge",
    "amd_hostbridge",
    "lpc",
    "uart",
    "virtio-blk",
    "virtio-net",
];

/// LPC devices (`-l help`).
pub const LPC_DEVICES: &[&str] = &["com1", "com2", "com3", "com4"];

impl Config {
    /// bhyve_init_config's defaults.
    pub fn with_defaults() -> Config {
        let mut c = Config::default();
        for (k, v) in [
            ("memory.size", "256M"),
            ("acpi_tables", "true"),
            ("acpi_tables_in_memory", "true"),
            ("x86.strictmsr", "true"),
            ("x86.mptable", "true"),
            ("x86.x2apic", "false"),
            ("x86.smap", "auto"),
            ("rtc.use_localtime", "true"),
            ("virtio_msix", "true"),
        ] {
            c.set(k, v);
        }
        c
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.nodes.insert(k.to_string(), v.to_string());
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.nodes.get(k).map(String::as_str)
    }

    /// bhyve's `get_config_bool`: true/yes/on/1, false/no/off/0.
    pub fn get_bool(&self, k: &str) -> Result<bool, ConfigError> {
        match self.get(k) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| {
                ConfigError::Value(k.to_string(), format!("{v:?} is not a boolean"))
            }),
        }
    }

    /// Nodes under `prefix.` (keys without the prefix).
    pub fn subtree(&self, prefix: &str) -> BTreeMap<String, String> {
        let p = format!("{prefix}.");
        self.nodes
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
            .collect()
    }

    /// `-o config.dump=1` output.
    pub fn dump(&self) -> String {
        self.nodes
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// `-o key=value`.
    pub fn set_opt(&mut self, s: &str) -> Result<(), ConfigError> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::Opt(s.into()))?;
        if k.is_empty() {
            return Err(ConfigError::Opt(s.into()));
        }
        self.set(k, v);
        Ok(())
    }

    /// `-k file`: key=value lines, `#` comments.
    pub fn read_file(&mut self, path: &str) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.into(),
            why: e.to_string(),
        })?;
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            self.set_opt(l).map_err(|_| ConfigError::File {
                path: path.into(),
                why: format!("line {}: expected key=value", n + 1),
            })?;
        }
        Ok(())
    }

    /// `-c [[cpus=]n][,sockets=n][,cores=n][,threads=n]`.
    pub fn parse_cpus(&mut self, s: &str) -> Result<(), ConfigError> {
        let bad = |why| ConfigError::Cpus(s.into(), why);
        let mut any = false;
        for (i, item) in s.split(',').enumerate() {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k, v),
                None if i == 0 => ("cpus", item),
                None => return Err(bad("expected key=value after the first item")),
            };
            if !matches!(k, "cpus" | "sockets" | "cores" | "threads") {
                return Err(bad("unknown topology key"));
            }
            let n: u32 = v.parse().map_err(|_| bad("not a number"))?;
            if n == 0 {
                return Err(bad("must be at least 1"));
            }
            self.set(k, v);
            any = true;
        }
        if !any {
            return Err(bad("empty"));
        }
        Ok(())
    }

    /// Topology as configured: (cpus, sockets, cores, threads), checked as
    /// bhyve checks it.
    pub fn topology(&self, maxcpu: usize) -> Result<(usize, u32, u32, u32), ConfigError> {
        let num = |k: &str| -> Result<Option<u32>, ConfigError> {
            match self.get(k) {
                None => Ok(None),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Some)
                    .ok_or_else(|| ConfigError::Value(k.into(), format!("{v:?} is not a count"))),
            }
        };
        let cpus = num("cpus")?;
        let (s, c, t) = (num("sockets")?, num("cores")?, num("threads")?);
        let n = match (cpus, s.or(c).or(t)) {
            (Some(n), None) => n,
            (n, Some(_)) => {
                let prod = s.unwrap_or(1) as u64 * c.unwrap_or(1) as u64 * t.unwrap_or(1) as u64;
                match n {
                    Some(n) if n as u64 != prod => {
                        return Err(ConfigError::Cpus(
                            format!("cpus={n}"),
                            "must equal sockets*cores*threads",
                        ));
                    }
                    _ => prod.min(u32::MAX as u64) as u32,
                }
            }
            (None, None) => 1,
        };
        if n as usize > maxcpu {
            return Err(ConfigError::Cpus(
                n.to_string(),
                "more vCPUs than the maximum (16)",
            ));
        }
        let (s, c, t) = match (s, c, t) {
            (None, None, None) => (n, 1, 1),
            _ => (s.unwrap_or(1), c.unwrap_or(1), t.unwrap_or(1)),
        };
        Ok((n as usize, s, c, t))
    }

    /// `-m size`.
    pub fn parse_mem(&mut self, s: &str) -> Result<(), ConfigError> {
        vmmapi::parse_memsize(s).ok_or_else(|| ConfigError::Mem(s.into()))?;
        self.set("memory.size", s);
        Ok(())
    }

    pub fn memsize(&self) -> Result<u64, ConfigError> {
        let s = self.get("memory.size").unwrap_or("256M");
        let b = vmmapi::parse_memsize(s).ok_or_else(|| ConfigError::Mem(s.into()))?;
        // libvmmapi rounds to whole 2 MiB pages.
        b.checked_next_multiple_of(vmmapi::mem::MEM_ALIGN)
            .filter(|&b| b > 0)
            .ok_or_else(|| ConfigError::Mem(s.into()))
    }

    /// `-s slot[:func],emul[,conf]` or `bus:slot:func,...`; `legacy` for the
    /// 2013 `-S` form (the device gets ISA resources).
    pub fn parse_slot(&mut self, s: &str, legacy: bool) -> Result<(), ConfigError> {
        let bad = |why: &str| ConfigError::Slot(s.into(), why.into());
        let (loc, rest) = s
            .split_once(',')
            .ok_or_else(|| bad("expected slot,emulation"))?;
        let (emul, conf) = match rest.split_once(',') {
            Some((e, c)) => (e, Some(c)),
            None => (rest, None),
        };
        let nums: Vec<&str> = loc.split(':').collect();
        let parse = |v: &str, max: u32, what: &str| -> Result<u32, ConfigError> {
            v.parse::<u32>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| bad(&format!("{what} must be 0-{max}")))
        };
        let (bus, slot, func) = match nums.as_slice() {
            [s] => (0, parse(s, 31, "slot")?, 0),
            [s, f] => (0, parse(s, 31, "slot")?, parse(f, 7, "function")?),
            [b, s, f] => (
                parse(b, 255, "bus")?,
                parse(s, 31, "slot")?,
                parse(f, 7, "function")?,
            ),
            _ => return Err(bad("expected [bus:]slot[:func]")),
        };
        if emul.is_empty() {
            return Err(bad("missing device emulation"));
        }
        if !PCI_EMULATIONS.contains(&emul) {
            return Err(bad(&format!(
                "unknown device emulation \"{emul}\" (bhyve -s help lists them)"
            )));
        }
        if emul == "lpc" && bus != 0 {
            return Err(bad("the LPC bridge must be on bus 0"));
        }
        let node = format!("pci.{bus}.{slot}.{func}");
        if self.get(&format!("{node}.device")).is_some() {
            return Err(ConfigError::DupSlot(
                s.into(),
                format!("{bus}:{slot}:{func}"),
            ));
        }
        if emul == "lpc"
            && self
                .nodes
                .iter()
                .any(|(k, v)| k.ends_with(".device") && v == "lpc")
        {
            return Err(bad("only one LPC bridge is allowed"));
        }
        self.set(&format!("{node}.device"), emul);
        if legacy {
            self.set(&format!("{node}.legacy"), "true");
        }
        if let Some(conf) = conf {
            self.parse_device_conf(&node, emul, conf)
                .map_err(|why| ConfigError::Slot(s.into(), why))?;
        }
        Ok(())
    }

    fn parse_device_conf(&mut self, node: &str, emul: &str, conf: &str) -> Result<(), String> {
        let mut items = conf.split(',');
        // Legacy positional first item: a backend path.
        match emul {
            "uart" | "virtio-blk" | "virtio-net" => {
                if let Some(first) = items.next() {
                    if first.contains('=') && !first.starts_with("path=") {
                        self.set_kv(node, first);
                    } else {
                        let key = if emul == "virtio-net" {
                            "backend"
                        } else {
                            "path"
                        };
                        self.set(
                            &format!("{node}.{key}"),
                            first.strip_prefix("path=").unwrap_or(first),
                        );
                    }
                }
            }
            _ => {}
        }
        for it in items {
            if it.is_empty() {
                return Err("empty option".into());
            }
            self.set_kv(node, it);
        }
        Ok(())
    }

    fn set_kv(&mut self, node: &str, item: &str) {
        match item.split_once('=') {
            Some((k, v)) => self.set(&format!("{node}.{k}"), v),
            None => self.set(&format!("{node}.{item}"), "true"),
        }
    }

    /// `-l com1,stdio` etc.
    pub fn parse_lpc(&mut self, s: &str) -> Result<(), ConfigError> {
        let (dev, conf) = match s.split_once(',') {
            Some((d, c)) => (d, Some(c)),
            None => (s, None),
        };
        let dev = dev.to_ascii_lowercase();
        if !LPC_DEVICES.contains(&dev.as_str()) {
            return Err(ConfigError::Lpc(
                s.into(),
                "unknown LPC device (bhyve -l help lists them)",
            ));
        }
        let conf = conf.ok_or(ConfigError::Lpc(
            s.into(),
            "missing backend (stdio or a tty path)",
        ))?;
        if conf.is_empty() {
            return Err(ConfigError::Lpc(s.into(), "empty backend"));
        }
        self.set(&format!("lpc.{dev}.path"), conf);
        Ok(())
    }

    /// `-p vcpu:hostcpu`.
    pub fn parse_pin(&mut self, s: &str) -> Result<(), ConfigError> {
        let (v, h) = s
            .split_once(':')
            .ok_or_else(|| ConfigError::Pin(s.into()))?;
        let v: u32 = v.parse().map_err(|_| ConfigError::Pin(s.into()))?;
        let h: u32 = h.parse().map_err(|_| ConfigError::Pin(s.into()))?;
        self.set(&format!("vcpu.{v}.cpuset"), &h.to_string());
        Ok(())
    }

    /// Each vCPU's host CPU from `vcpu.N.cpuset` (`-p N:H`), checked
    /// against the VM's vCPUs and the host's CPUs.
    pub fn pins(&self, ncpus: usize, host_cpus: usize) -> Result<Vec<Option<usize>>, ConfigError> {
        let mut pins = vec![None; ncpus];
        for (k, v) in &self.nodes {
            let Some(n) = k
                .strip_prefix("vcpu.")
                .and_then(|r| r.strip_suffix(".cpuset"))
            else {
                continue;
            };
            let bad = |why: String| ConfigError::Value(k.clone(), why);
            let n: usize = n.parse().map_err(|_| bad("not a vCPU number".into()))?;
            let h: usize = v
                .parse()
                .map_err(|_| bad(format!("{v:?} is not a host CPU")))?;
            if n >= ncpus {
                return Err(bad(format!("no vCPU {n}: the VM has {ncpus}")));
            }
            if h >= host_cpus {
                return Err(bad(format!("no host CPU {h}: the host has {host_cpus}")));
            }
            pins[n] = Some(h);
        }
        Ok(pins)
    }

    /// `x86.smap`: offer SMAP to the guest (`Some(true)`), hide it
    /// (`Some(false)`), or `auto` (`None`): decide by probing the host.
    pub fn smap(&self) -> Result<Option<bool>, ConfigError> {
        match self.get("x86.smap") {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("auto") => Ok(None),
            Some(v) => parse_bool(v).map(Some).ok_or_else(|| {
                ConfigError::Value(
                    "x86.smap".into(),
                    format!("{v:?} is not auto, true or false"),
                )
            }),
        }
    }

    /// The configured PCI functions: (bus, slot, func) → node subtree.
    pub fn pci_devices(&self) -> Vec<(Bdf, BTreeMap<String, String>)> {
        let mut out = BTreeMap::new();
        for k in self.nodes.keys() {
            let Some(rest) = k.strip_prefix("pci.") else {
                continue;
            };
            let parts: Vec<&str> = rest.splitn(4, '.').collect();
            if let [b, s, f, "device"] = parts.as_slice() {
                if let (Ok(b), Ok(s), Ok(f)) = (b.parse(), s.parse(), f.parse()) {
                    out.insert((b, s, f), self.subtree(&format!("pci.{b}.{s}.{f}")));
                }
            }
        }
        out.into_iter().collect()
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod pin_tests {
    use super::*;

    #[test]
    fn pins_are_checked() {
        let mut c = Config::with_defaults();
        c.parse_pin("1:0").unwrap();
        assert_eq!(c.pins(2, 2).unwrap(), vec![None, Some(0)]);
        assert!(c.pins(1, 2).is_err(), "vCPU 1 of a 1-vCPU VM");
        c.parse_pin("0:7").unwrap();
        assert!(c.pins(2, 2).is_err(), "host CPU 7 of 2");
        assert!(c.parse_pin("x:1").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_both_generations() {
        let mut c = Config::with_defaults();
        c.parse_slot("0:0,virtio-blk,disk.img", false).unwrap();
        c.parse_slot("31,uart,stdio", true).unwrap();
        c.parse_slot("1:2:3,virtio-net,tap0,mac=00:a0:98:00:00:01", false)
            .unwrap();
        assert_eq!(c.get("pci.0.0.0.device"), Some("virtio-blk"));
        assert_eq!(c.get("pci.0.0.0.path"), Some("disk.img"));
        assert_eq!(c.get("pci.0.31.0.legacy"), Some("true"));
        assert_eq!(c.get("pci.0.31.0.path"), Some("stdio"));
        assert_eq!(c.get("pci.1.2.3.backend"), Some("tap0"));
        assert_eq!(c.get("pci.1.2.3.mac"), Some("00:a0:98:00:00:01"));
        assert_eq!(c.pci_devices().len(), 3);
    }

    #[test]
    fn bad_slots() {
        let mut c = Config::with_defaults();
        c.parse_slot("3,hostbridge", false).unwrap();
        assert!(matches!(
            c.parse_slot("3,lpc", false),
            Err(ConfigError::DupSlot(..))
        ));
        for s in [
            "32,uart",
            "3:8,uart",
            "x,uart",
            "3",
            "3,",
            "3,ahci9",
            "1:2:3:4,uart",
            "256:0:0,uart",
            "1:0:0,lpc",
        ] {
            assert!(c.parse_slot(s, false).is_err(), "{s}");
        }
        c.parse_slot("31,lpc", false).unwrap();
        assert!(c.parse_slot("30,lpc", false).is_err(), "second lpc");
    }

    #[test]
    fn cpus_and_topology() {
        let mut c = Config::with_defaults();
        c.parse_cpus("4").unwrap();
        assert_eq!(c.topology(16).unwrap(), (4, 4, 1, 1));
        let mut c = Config::with_defaults();
        c.parse_cpus("cpus=4,sockets=2,cores=2").unwrap();
        assert_eq!(c.topology(16).unwrap(), (4, 2, 2, 1));
        let mut c = Config::with_defaults();
        c.parse_cpus("sockets=1,cores=2,threads=2").unwrap();
        assert_eq!(c.topology(16).unwrap().0, 4);
        let mut c = Config::with_defaults();
        c.parse_cpus("cpus=3,sockets=2").unwrap();
        assert!(c.topology(16).is_err());
        for s in ["0", "x", "", "cpus=1,bogus=2", "2,3"] {
            assert!(Config::with_defaults().parse_cpus(s).is_err(), "{s}");
        }
        let mut c = Config::with_defaults();
        c.parse_cpus("17").unwrap();
        assert!(c.topology(16).is_err());
    }

    #[test]
    fn mem_lpc_opts() {
        let mut c = Config::with_defaults();
        assert_eq!(c.memsize().unwrap(), 256 << 20);
        c.parse_mem("1G").unwrap();
        assert_eq!(c.memsize().unwrap(), 1 << 30);
        c.parse_mem("1024").unwrap();
        assert_eq!(c.memsize().unwrap(), 1 << 30);
        assert!(c.parse_mem("lots").is_err());
        c.parse_lpc("com1,stdio").unwrap();
        assert_eq!(c.get("lpc.com1.path"), Some("stdio"));
        assert!(c.parse_lpc("com9,stdio").is_err());
        assert!(c.parse_lpc("com1").is_err());
        c.set_opt("x86.strictio=true").unwrap();
        assert!(c.get_bool("x86.strictio").unwrap());
        assert!(c.set_opt("novalue").is_err());
        c.set_opt("bad=maybe").unwrap();
        assert!(c.get_bool("bad").is_err());
        assert!(c.dump().contains("memory.size=1024\n"));
        c.parse_pin("0:1").unwrap();
        assert!(c.parse_pin("0").is_err());
    }

    #[test]
    fn smap_choice() {
        let mut c = Config::with_defaults();
        assert_eq!(c.smap().unwrap(), None, "probe by default");
        c.set_opt("x86.smap=false").unwrap();
        assert_eq!(c.smap().unwrap(), Some(false));
        c.set_opt("x86.smap=on").unwrap();
        assert_eq!(c.smap().unwrap(), Some(true));
        c.set_opt("x86.smap=AUTO").unwrap();
        assert_eq!(c.smap().unwrap(), None);
        c.set_opt("x86.smap=sometimes").unwrap();
        assert_eq!(
            c.smap().unwrap_err().to_string(),
            "x86.smap: \"sometimes\" is not auto, true or false"
        );
    }
}
