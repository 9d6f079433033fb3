//! The discovery service: the log page (LID 70h) that tells a host which subsystems it may
//! connect to and where.
//!
//! A host sees one "current discovery subsystem" entry per listening address, then one entry
//! per (subsystem that allows it, address that subsystem listens on). Hosts read the page in
//! pieces (header first, then the records at an offset, then the header again to compare the
//! generation counter), so the page is built afresh for each command from the current
//! configuration and the counter moves only when that configuration changes.

use super::subsystem::Kind;
use super::{target, ListenAddr, DISCOVERY_NQN};
use crate::nvme::fabrics::CNTLID_DYNAMIC;
use crate::nvme::log_page::{
    adrfam, discovery_log, subtype, trtype, DiscoveryEntry, TREQ_SQFLOW_DISABLE_SUPPORTED,
};

fn entry(addr: &ListenAddr, portid: u16, sub: u8, nqn: &str, asqsz: u16) -> DiscoveryEntry {
    DiscoveryEntry {
        trtype: trtype::TCP,
        adrfam: if addr.adrfam.eq_ignore_ascii_case("ipv6") {
            adrfam::IPV6
        } else {
            adrfam::IPV4
        },
        subtype: sub,
        treq: TREQ_SQFLOW_DISABLE_SUPPORTED,
        portid,
        cntlid: CNTLID_DYNAMIC,
        asqsz,
        trsvcid: addr.trsvcid.clone(),
        subnqn: nqn.to_owned(),
        traddr: addr.traddr.clone(),
    }
}

/// The whole discovery log page for `hostnqn`.
pub fn log_page(hostnqn: &str) -> Vec<u8> {
    // Read the counter first: a change racing with this build makes the next read differ.
    let genctr = target::genctr();
    let asqsz = target::transport().map_or(128, |t| t.max_aq_depth);
    let subs = target::subsystems();
    let mut addrs: Vec<ListenAddr> = Vec::new();
    for s in &subs {
        for a in &s.state().listeners {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
    }
    // Port IDs: the position of the address among all listeners, from 1.
    let portid = |a: &ListenAddr| {
        addrs
            .iter()
            .position(|x| x == a)
            .map_or(0, |p| p as u16 + 1)
    };
    let mut entries: Vec<DiscoveryEntry> = addrs
        .iter()
        .map(|a| {
            entry(
                a,
                portid(a),
                subtype::CURRENT_DISCOVERY,
                DISCOVERY_NQN,
                asqsz,
            )
        })
        .collect();
    for s in subs.iter().filter(|s| s.kind == Kind::Nvm) {
        if !s.host_allowed(hostnqn) {
            continue;
        }
        for a in s.state().listeners.iter() {
            entries.push(entry(a, portid(a), subtype::NVM, &s.nqn, asqsz));
        }
    }
    discovery_log(genctr, &entries)
}
