//! Which machine a request is: by its MAC, or by the switch port it is
//! plugged into (DHCP option 82 from the relay: circuit-id, remote-id).
//!
//! Pure. A MAC the inventory knows is that machine. A MAC it has never seen,
//! relayed from a port where a machine that opted into port identity (its
//! label `identity = port`, or its group's variable `identity = port`) was
//! last seen, is that machine's replacement: it inherits the role (group),
//! labels, pin and name, and so boots the same generation, without anyone
//! registering it. `explain` and the ledger show which identity matched.

use serde::Serialize;

use crate::domain::MacAddr;

/// A switch port as a relay names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct SwitchPort {
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
}

impl SwitchPort {
    /// `None` unless the relay said at least one of the two.
    pub fn new(circuit_id: Option<String>, remote_id: Option<String>) -> Option<Self> {
        (circuit_id.is_some() || remote_id.is_some()).then_some(Self {
            circuit_id,
            remote_id,
        })
    }
}

/// How a request was matched to a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum IdentityMatch {
    /// The machine with this MAC (known, or new and registered by it).
    Mac,
    /// A new MAC in the port of `replaces`: it takes that machine's place.
    Port { port: SwitchPort, replaces: MacAddr },
}

/// A machine already in the inventory, as the port match needs it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub mac: MacAddr,
    pub port: Option<&'a SwitchPort>,
    /// The machine or its group says "identify me by my port".
    pub by_port: bool,
}

/// Decides the identity of a request from `mac` (relayed from `port`, if
/// it was). `known`: the inventory already holds `mac`.
pub fn resolve<'a>(
    mac: MacAddr,
    known: bool,
    port: Option<&SwitchPort>,
    machines: impl IntoIterator<Item = Candidate<'a>>,
) -> IdentityMatch {
    let Some(port) = port.filter(|_| !known) else {
        return IdentityMatch::Mac;
    };
    // Several candidates only if two machines shared a port without a boot
    // in between; the lowest MAC makes the answer repeatable.
    let replaced = machines
        .into_iter()
        .filter(|c| c.mac != mac && c.by_port && c.port == Some(port))
        .map(|c| c.mac)
        .min();
    match replaced {
        Some(replaces) => IdentityMatch::Port {
            port: port.clone(),
            replaces,
        },
        None => IdentityMatch::Mac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_table() {
        static P7: LazyLock<SwitchPort> = LazyLock::new(|| port("Eth1/7"));
        static P8: LazyLock<SwitchPort> = LazyLock::new(|| port("Eth1/8"));
        let mac = |n: u8| MacAddr([0x52, 0x54, 0, 0, 0, n]);
        let old = |n, p: &'static SwitchPort, by_port| Candidate {
            mac: mac(n),
            port: Some(p),
            by_port,
        };
        let replaces = |n| IdentityMatch::Port {
            port: P7.clone(),
            replaces: mac(n),
        };
        let (p7, p8): (&SwitchPort, &SwitchPort) = (&P7, &P8);
        type Row<'a> = (
            &'a str,
            bool,
            Option<&'a SwitchPort>,
            Vec<Candidate<'a>>,
            IdentityMatch,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("not relayed",                 false, None,     vec![old(1, p7, true)],                   IdentityMatch::Mac),
            ("new MAC, opted-in port",      false, Some(p7), vec![old(1, p7, true)],                   replaces(1)),
            ("new MAC, port not opted in",  false, Some(p7), vec![old(1, p7, false)],                  IdentityMatch::Mac),
            ("new MAC, another port",       false, Some(p8), vec![old(1, p7, true)],                   IdentityMatch::Mac),
            ("known MAC keeps its own",     true,  Some(p7), vec![old(1, p7, true)],                   IdentityMatch::Mac),
            ("two in the port: lowest MAC", false, Some(p7), vec![old(3, p7, true), old(2, p7, true)], replaces(2)),
            ("only the port's machine",     false, Some(p7), vec![old(4, p8, true), old(5, p7, true)], replaces(5)),
        ];
        for (name, known, port, machines, want) in table {
            assert_eq!(resolve(mac(9), known, port, machines), want, "{name}");
        }
        assert_eq!(SwitchPort::new(None, None), None);
    }

    fn port(circuit: &str) -> SwitchPort {
        SwitchPort::new(Some(circuit.into()), Some("leaf-3".into())).unwrap()
    }

    use std::sync::LazyLock;
}
