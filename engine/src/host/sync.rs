//! A blocking NVMe/TCP queue for the control path: connection set-up, Connect, properties,
//! Identify and other admin commands, one command at a time. Tests use it too, to speak the
//! protocol PDU by PDU and to break its rules on purpose ([`SyncQueue::send`],
//! [`SyncQueue::frame`]).
//!
//! Never used on a reactor: every call may block (bounded by the socket timeouts).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::HostError;
use crate::nvme::fabrics::{self, ConnectCmd, ConnectData, CNTLID_DYNAMIC};
use crate::nvme::sgl::{SglDesc, IN_CAPSULE, TRANSPORT};
use crate::nvme::{admin, registers, Cqe, Sqe, Status};
use crate::nvmf::tcp::pdu::{
    self, flags, CommonHeader, DataHeader, IcReq, IcResp, Negotiated, PduType,
};

/// Bytes of in-capsule data an admin queue may carry (what the Linux host assumes, too).
pub const ADMIN_INLINE: usize = 8192;
/// The largest PDU accepted from a target: a 128 KiB C2HData with headers and digests, or an
/// admin reply of up to 1 MiB.
const MAX_PLEN: u32 = (1 << 20) + 256;

/// A PDU as received: its checked common header and all its bytes.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub h: CommonHeader,
    pub bytes: Vec<u8>,
}

impl Pdu {
    pub fn data(&self) -> &[u8] {
        let (at, len) = self.h.data_range();
        &self.bytes[at..at + len]
    }

    /// A C2HTermReq's (FES, FEI).
    pub fn term(&self) -> Option<(u16, u32)> {
        (self.h.pdu_type == PduType::C2hTermReq && self.bytes.len() >= 14).then(|| {
            (
                u16::from_le_bytes([self.bytes[8], self.bytes[9]]),
                u32::from_le_bytes([
                    self.bytes[10],
                    self.bytes[11],
                    self.bytes[12],
                    self.bytes[13],
                ]),
            )
        })
    }
}

/// The outcome of a command: its completion and any data the controller sent.
#[derive(Debug, Clone)]
pub struct Done {
    pub cqe: Cqe,
    pub data: Vec<u8>,
    /// A read ended with C2HData's SUCCESS flag instead of a response capsule.
    pub by_success_flag: bool,
}

impl Done {
    pub fn status(&self) -> Status {
        Status::from_field(self.cqe.status).0
    }

    /// `Ok(self)` if the command succeeded, else an error naming `what`.
    pub fn ok(self, what: &'static str) -> Result<Done, HostError> {
        let status = self.status();
        if status.is_success() {
            Ok(self)
        } else {
            Err(HostError::Status { what, status })
        }
    }
}

pub struct SyncQueue {
    pub sock: TcpStream,
    pub neg: Negotiated,
    /// MAXH2CDATA from the target's ICResp.
    pub maxh2cdata: u32,
    /// Data up to this size goes in the command capsule.
    pub inline_max: usize,
    /// Ask for SQ flow control to be disabled at Connect.
    pub sqflow_off: bool,
    next_cid: u16,
}

impl SyncQueue {
    /// A TCP connection to `addr`, not yet initialised.
    pub fn tcp(addr: &str, timeout: Duration) -> Result<SyncQueue, HostError> {
        let fail = |source| HostError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let target = addr
            .to_socket_addrs()
            .map_err(fail)?
            .next()
            .ok_or_else(|| fail(std::io::ErrorKind::AddrNotAvailable.into()))?;
        let sock = TcpStream::connect_timeout(&target, timeout).map_err(fail)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        sock.set_nodelay(true)?;
        Ok(SyncQueue {
            sock,
            neg: Negotiated {
                max_plen: MAX_PLEN,
                ..Negotiated::INITIAL
            },
            maxh2cdata: 0,
            inline_max: ADMIN_INLINE,
            sqflow_off: false,
            next_cid: 0,
        })
    }

    /// Connect and exchange ICReq/ICResp, asking for these digests; the ICResp is checked as
    /// the Linux host checks it.
    pub fn new(
        addr: &str,
        header_digest: bool,
        data_digest: bool,
        timeout: Duration,
    ) -> Result<SyncQueue, HostError> {
        let mut q = SyncQueue::tcp(addr, timeout)?;
        let dgst = (header_digest as u8) | (data_digest as u8) << 1;
        let resp = q.ic_req(dgst)?;
        if resp.dgst != dgst {
            return Err(HostError::IcResp(format!(
                "digests {:#x} where {dgst:#x} was asked",
                resp.dgst
            )));
        }
        if resp.cpda != 0 {
            return Err(HostError::IcResp(format!(
                "CPDA {} (only 0 is supported)",
                resp.cpda
            )));
        }
        if resp.maxh2cdata < 4096 || resp.maxh2cdata % 4 != 0 {
            return Err(HostError::IcResp(format!(
                "MAXH2CDATA {} is below 4096 or not a multiple of 4",
                resp.maxh2cdata
            )));
        }
        Ok(q)
    }

    /// Send ICReq asking for `dgst`, and take the ICResp (checked only for form).
    pub fn ic_req(&mut self, dgst: u8) -> Result<IcResp, HostError> {
        let req = IcReq {
            pfv: 0,
            hpda: 0,
            dgst,
            maxr2t: 0,
        };
        self.send(&req.encode())?;
        let saved = self.neg;
        self.neg = Negotiated {
            max_plen: MAX_PLEN,
            ..Negotiated::INITIAL
        };
        let p = self.recv();
        self.neg = saved;
        let p = p?;
        if p.h.pdu_type != PduType::IcResp {
            return Err(match p.term() {
                Some((fes, fei)) => HostError::TermReq { fes, fei },
                None => HostError::IcResp(format!("a {:?} instead", p.h.pdu_type)),
            });
        }
        let b: &[u8; 128] = p.bytes[..128]
            .try_into()
            .map_err(|_| HostError::IcResp("shorter than 128 bytes".into()))?;
        let resp = IcResp::decode(b).map_err(|e| HostError::IcResp(e.to_string()))?;
        if resp.pfv != 0 {
            return Err(HostError::IcResp(format!("PFV {}", resp.pfv)));
        }
        self.neg.header_digest = resp.dgst & pdu::dgst::HEADER != 0;
        self.neg.data_digest = resp.dgst & pdu::dgst::DATA != 0;
        self.maxh2cdata = resp.maxh2cdata;
        Ok(resp)
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        self.sock.write_all(bytes).map_err(HostError::Io)
    }

    fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, HostError> {
        let mut b = vec![0u8; n];
        self.sock.read_exact(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => HostError::Closed,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                HostError::Timeout("waiting for the target")
            }
            _ => HostError::Io(e),
        })?;
        Ok(b)
    }

    /// The next PDU, its header and data digests checked.
    pub fn recv(&mut self) -> Result<Pdu, HostError> {
        let ch = self.read_exact(8)?;
        let head: &[u8; 8] = ch[..8].try_into().expect("8 bytes");
        let h = CommonHeader::decode(head, &self.neg)
            .map_err(|e| HostError::Protocol(format!("bad header {ch:?}: {e}")))?;
        let mut bytes = ch;
        bytes.extend(self.read_exact(h.plen as usize - 8)?);
        pdu::check_header_digest(&bytes, &h).map_err(|e| HostError::Protocol(e.to_string()))?;
        if !pdu::data_digest_ok(&bytes, &h) {
            return Err(HostError::Protocol("data digest mismatch".into()));
        }
        Ok(Pdu { h, bytes })
    }

    /// True once the target has closed the connection (EOF or reset within the timeout).
    pub fn closed_by_target(&mut self) -> bool {
        let mut b = [0u8; 256];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    /// The bytes of a PDU: `head` (its common header filled in here), the header digest, data
    /// and data digest as negotiated, and `extra_flags`.
    pub fn frame(
        &self,
        pdu_type: PduType,
        mut head: Vec<u8>,
        data: &[u8],
        extra_flags: u8,
    ) -> Vec<u8> {
        let hlen = head.len();
        let hd = if self.neg.header_digest { 4 } else { 0 };
        let dd = if self.neg.data_digest && !data.is_empty() {
            4
        } else {
            0
        };
        let fl = extra_flags | pdu::digest_flags(hd != 0, dd != 0);
        let pdo = if data.is_empty() { 0 } else { hlen + hd };
        let ch = CommonHeader {
            pdu_type,
            flags: fl,
            hlen: hlen as u8,
            pdo: pdo as u8,
            plen: (hlen + hd + data.len() + dd) as u32,
        };
        head[..8].copy_from_slice(&ch.encode());
        let mut out = head.clone();
        if hd != 0 {
            out.extend(pdu::crc32c(&head).to_le_bytes());
        }
        out.extend_from_slice(data);
        if dd != 0 {
            out.extend(pdu::crc32c(data).to_le_bytes());
        }
        out
    }

    /// A command capsule with `inline` as in-capsule data.
    pub fn capsule(&self, sqe: &Sqe, inline: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; 72];
        head[8..72].copy_from_slice(&sqe.encode());
        self.frame(PduType::CapsuleCmd, head, inline, 0)
    }

    pub fn h2c_data(&self, cid: u16, ttag: u16, offset: u32, data: &[u8], last: bool) -> Vec<u8> {
        let dh = DataHeader {
            cccid: cid,
            ttag,
            offset,
            length: data.len() as u32,
        };
        let ch = CommonHeader {
            pdu_type: PduType::H2cData,
            flags: 0,
            hlen: 24,
            pdo: 0,
            plen: 0,
        };
        let last = if last { flags::LAST_PDU } else { 0 };
        self.frame(PduType::H2cData, dh.encode(ch).to_vec(), data, last)
    }

    /// Run a command to completion. `out`: data for the controller (in the capsule when it
    /// fits, else through R2T); `want`: bytes expected back.
    pub fn run(&mut self, mut sqe: Sqe, out: &[u8], want: usize) -> Result<Done, HostError> {
        sqe.cid = self.cid();
        let sgl = if !out.is_empty() && out.len() <= self.inline_max {
            SglDesc {
                addr: 0,
                len: out.len() as u32,
                id: IN_CAPSULE,
            }
        } else {
            SglDesc {
                addr: 0,
                len: out.len().max(want) as u32,
                id: TRANSPORT,
            }
        };
        sqe.flags |= 0x40; // PSDT: SGL.
        sqe.dptr = sgl.encode();
        let inline = if sgl.id == IN_CAPSULE { out } else { &[][..] };
        let capsule = self.capsule(&sqe, inline);
        self.send(&capsule)?;
        let mut data = Vec::new();
        loop {
            let p = self.recv()?;
            let foreign = |what: &str| HostError::Protocol(format!("{what} for another command"));
            match p.h.pdu_type {
                PduType::R2t => {
                    let dh = DataHeader::decode(&p.bytes).ok_or(HostError::Closed)?;
                    if dh.cccid != sqe.cid {
                        return Err(foreign("R2T"));
                    }
                    let start = dh.offset as usize;
                    let end = dh.offset as u64 + dh.length as u64;
                    if end > out.len() as u64 || dh.length == 0 {
                        return Err(HostError::Protocol("R2T beyond the command's data".into()));
                    }
                    let end = end as usize;
                    let mut at = start;
                    while at < end {
                        let n = (end - at).min(self.maxh2cdata as usize);
                        let pdu = self.h2c_data(
                            sqe.cid,
                            dh.ttag,
                            at as u32,
                            &out[at..at + n],
                            at + n == end,
                        );
                        self.send(&pdu)?;
                        at += n;
                    }
                }
                PduType::C2hData => {
                    let dh = DataHeader::decode(&p.bytes).ok_or(HostError::Closed)?;
                    if dh.cccid != sqe.cid {
                        return Err(foreign("C2HData"));
                    }
                    if dh.offset as usize != data.len() {
                        return Err(HostError::Protocol("C2HData out of order".into()));
                    }
                    if data.len() + p.data().len() > want {
                        return Err(HostError::Protocol(
                            "C2HData beyond the command's data".into(),
                        ));
                    }
                    data.extend_from_slice(p.data());
                    if p.h.flags & flags::SUCCESS != 0 {
                        let cqe = Cqe {
                            cid: sqe.cid,
                            ..Cqe::default()
                        };
                        return Ok(Done {
                            cqe,
                            data,
                            by_success_flag: true,
                        });
                    }
                }
                PduType::CapsuleResp => {
                    let cqe = pdu::capsule_cqe(&p.bytes).ok_or(HostError::Closed)?;
                    if cqe.cid != sqe.cid {
                        return Err(foreign("a response"));
                    }
                    return Ok(Done {
                        cqe,
                        data,
                        by_success_flag: false,
                    });
                }
                PduType::C2hTermReq => {
                    let (fes, fei) = p.term().unwrap_or_default();
                    return Err(HostError::TermReq { fes, fei });
                }
                other => return Err(HostError::Protocol(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Fabrics Connect for queue `qid` (SQSIZE `sqsize`, 0's based).
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        qid: u16,
        cntlid: u16,
        sqsize: u16,
        kato: u32,
    ) -> Result<Done, HostError> {
        let cmd = ConnectCmd {
            recfmt: 0,
            qid,
            sqsize,
            cattr: if self.sqflow_off {
                fabrics::CATTR_DISABLE_SQFLOW
            } else {
                0
            },
            kato,
        };
        let data = ConnectData {
            hostid,
            cntlid,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        }
        .encode();
        let limit = self.inline_max;
        self.inline_max = ADMIN_INLINE;
        let r = self.run(cmd.to_sqe(0, [0; 16]), &data, 0);
        self.inline_max = limit;
        r
    }

    pub fn prop_get(&mut self, offset: u32, wide: bool) -> Result<u64, HostError> {
        let mut sqe = Sqe {
            opcode: fabrics::OPCODE,
            nsid: fabrics::PROPERTY_GET as u32,
            ..Sqe::default()
        };
        sqe.cdw[0] = wide as u32;
        sqe.cdw[1] = offset;
        let d = self.run(sqe, &[], 0)?.ok("Property Get")?;
        Ok(d.cqe.dw0 as u64 | (d.cqe.dw1 as u64) << 32)
    }

    pub fn prop_set(&mut self, offset: u32, value: u64) -> Result<(), HostError> {
        let mut sqe = Sqe {
            opcode: fabrics::OPCODE,
            nsid: fabrics::PROPERTY_SET as u32,
            ..Sqe::default()
        };
        sqe.cdw[1] = offset;
        sqe.cdw[2] = value as u32;
        sqe.cdw[3] = (value >> 32) as u32;
        self.run(sqe, &[], 0)?.ok("Property Set").map(drop)
    }

    /// Set CC.EN (4 KiB pages, 64/16-byte entries) and wait for CSTS.RDY, up to CAP.TO.
    pub fn enable(&mut self) -> Result<(), HostError> {
        let cap = self.prop_get(registers::CAP, true)?;
        self.prop_set(registers::CC, 0x46_0001)?;
        let limit = Duration::from_millis(500 * ((cap >> 24) & 0xFF).max(1));
        let t0 = std::time::Instant::now();
        loop {
            if self.prop_get(registers::CSTS, false)? & 1 == 1 {
                return Ok(());
            }
            if t0.elapsed() > limit {
                return Err(HostError::Timeout("CSTS.RDY after CC.EN"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Admin Connect (dynamic controller) and enable: the controller ID.
    pub fn admin(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        kato: u32,
    ) -> Result<u16, HostError> {
        let d = self
            .connect(subnqn, hostnqn, hostid, 0, CNTLID_DYNAMIC, 31, kato)?
            .ok("admin queue Connect")?;
        self.enable()?;
        Ok(d.cqe.dw0 as u16)
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Done, HostError> {
        let mut sqe = Sqe {
            opcode: admin::IDENTIFY,
            nsid,
            ..Sqe::default()
        };
        sqe.cdw[0] = cns as u32;
        self.run(sqe, &[], 4096)
    }

    pub fn get_log(&mut self, lid: u8, offset: u64, len: usize) -> Result<Done, HostError> {
        let mut sqe = Sqe {
            opcode: admin::GET_LOG_PAGE,
            nsid: u32::MAX,
            ..Sqe::default()
        };
        let numd = (len / 4 - 1) as u32;
        sqe.cdw[0] = lid as u32 | (numd & 0xFFFF) << 16;
        sqe.cdw[1] = numd >> 16;
        sqe.cdw[2] = offset as u32;
        sqe.cdw[3] = (offset >> 32) as u32;
        self.run(sqe, &[], len)
    }

    pub fn keep_alive(&mut self) -> Result<(), HostError> {
        let sqe = Sqe {
            opcode: admin::KEEP_ALIVE,
            ..Sqe::default()
        };
        self.run(sqe, &[], 0)?.ok("Keep Alive").map(drop)
    }
}

/// A Read, Write or Compare of `blocks` blocks at `slba` (CID and SGL still to set).
pub fn rw_sqe(opcode: u8, nsid: u32, slba: u64, blocks: u32) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        nsid,
        ..Sqe::default()
    };
    sqe.cdw[0] = slba as u32;
    sqe.cdw[1] = (slba >> 32) as u32;
    sqe.cdw[2] = blocks - 1;
    sqe
}

/// An SGL descriptor's 16 bytes, for SQEs built by hand.
pub fn sgl(id: u8, addr: u64, len: u32) -> [u8; 16] {
    SglDesc { addr, len, id }.encode()
}
