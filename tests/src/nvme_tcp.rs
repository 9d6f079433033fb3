//! A small, blocking NVMe/TCP host for tests: it speaks the protocol PDU by PDU with the
//! engine's codec, so that a test can both follow the rules and break them on purpose.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tandem::nvme::fabrics::{self, ConnectCmd, ConnectData, CNTLID_DYNAMIC};
use tandem::nvme::sgl::{SglDesc, IN_CAPSULE, TRANSPORT};
use tandem::nvme::{registers, Cqe, Sqe, Status};
use tandem::nvmf::tcp::pdu::{
    self, flags, CommonHeader, DataHeader, IcReq, IcResp, Negotiated, PduType,
};

/// An SGL descriptor's 16 bytes, for SQEs built by hand.
pub fn sgl(id: u8, addr: u64, len: u32) -> [u8; 16] {
    SglDesc { addr, len, id }.encode()
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

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

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
    pub fn term(&self) -> (u16, u32) {
        assert_eq!(self.h.pdu_type, PduType::C2hTermReq, "{self:?}");
        (
            u16::from_le_bytes([self.bytes[8], self.bytes[9]]),
            u32::from_le_bytes(self.bytes[10..14].try_into().unwrap()),
        )
    }
}

pub struct Host {
    pub sock: TcpStream,
    pub neg: Negotiated,
    pub maxh2cdata: u32,
    next_cid: u16,
    pub sqflow_off: bool,
}

/// The outcome of a command: its completion and any data the controller sent.
#[derive(Debug)]
pub struct Done {
    pub cqe: Cqe,
    pub data: Vec<u8>,
    /// The read ended with a C2HData SUCCESS flag instead of a response capsule.
    pub by_success_flag: bool,
}

impl Done {
    pub fn status(&self) -> Status {
        Status::from_field(self.cqe.status).0
    }
}

impl Host {
    /// A TCP connection, not yet initialised.
    pub fn tcp(port: u16) -> Host {
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to tandemd");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        Host {
            sock,
            neg: Negotiated {
                max_plen: 1 << 20,
                ..Negotiated::INITIAL
            },
            maxh2cdata: 0,
            next_cid: 1,
            sqflow_off: false,
        }
    }

    /// Connect and exchange ICReq/ICResp asking for these digests.
    pub fn new(port: u16, header_digest: bool, data_digest: bool) -> Host {
        let mut h = Host::tcp(port);
        let dgst = (header_digest as u8) | (data_digest as u8) << 1;
        let resp = h.ic_req(dgst);
        assert_eq!(resp.dgst, dgst, "the target echoes the digests asked for");
        assert_eq!(resp.cpda, 0);
        assert!(resp.maxh2cdata >= 4096 && resp.maxh2cdata.is_multiple_of(4));
        h
    }

    pub fn ic_req(&mut self, dgst: u8) -> IcResp {
        let req = IcReq {
            pfv: 0,
            hpda: 0,
            dgst,
            maxr2t: 0,
        };
        self.send(&req.encode());
        let p = self.recv_setup();
        assert_eq!(p.h.pdu_type, PduType::IcResp, "{p:?}");
        let resp = IcResp::decode(p.bytes[..128].try_into().unwrap()).expect("a valid ICResp");
        self.neg.header_digest = resp.dgst & pdu::dgst::HEADER != 0;
        self.neg.data_digest = resp.dgst & pdu::dgst::DATA != 0;
        self.maxh2cdata = resp.maxh2cdata;
        resp
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("send to tandemd");
    }

    fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.sock.read_exact(&mut b).ok()?;
        Some(b)
    }

    fn recv_setup(&mut self) -> Pdu {
        let saved = self.neg;
        self.neg = Negotiated {
            max_plen: 1 << 20,
            ..Negotiated::INITIAL
        };
        let p = self.recv().expect("a PDU");
        self.neg = saved;
        p
    }

    /// The next PDU, or None if the target closed the connection.
    pub fn recv(&mut self) -> Option<Pdu> {
        let ch = self.read_exact(8)?;
        let h = CommonHeader::decode(ch[..8].try_into().unwrap(), &self.neg)
            .unwrap_or_else(|e| panic!("the target sent a bad header {ch:?}: {e}"));
        let mut bytes = ch;
        bytes.extend(self.read_exact(h.plen as usize - 8)?);
        pdu::check_header_digest(&bytes, &h).expect("header digest from the target");
        if h.flags & flags::DDGST != 0 {
            let (at, len) = h.data_range();
            let want = pdu::crc32c(&bytes[at..at + len]).to_le_bytes();
            assert_eq!(
                &bytes[at + len..at + len + 4],
                &want,
                "data digest from the target"
            );
        }
        Some(Pdu { h, bytes })
    }

    /// True once the target has closed the connection (reads EOF within the timeout).
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
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        self.next_cid
    }

    fn header_flags(&self) -> u8 {
        if self.neg.header_digest {
            flags::HDGST
        } else {
            0
        }
    }

    /// The bytes of a PDU with this header, header digest, data and data digest as
    /// negotiated.
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
        let mut fl = self.header_flags() | extra_flags;
        if dd != 0 {
            fl |= flags::DDGST;
        }
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
        let head = dh.encode(ch).to_vec();
        self.frame(
            PduType::H2cData,
            head,
            data,
            if last { flags::LAST_PDU } else { 0 },
        )
    }

    /// Run a command to completion. `out`: data for the controller (in-capsule when it fits
    /// `inline_max`, else through R2T); `want`: bytes the host expects back.
    pub fn run(&mut self, mut sqe: Sqe, out: &[u8], want: usize, inline_max: usize) -> Done {
        sqe.cid = self.cid();
        let sgl = if !out.is_empty() && out.len() <= inline_max {
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
        sqe.flags |= 0x40; // PSDT: SGL
        sqe.dptr = sgl.encode();
        let inline = if sgl.id == IN_CAPSULE { out } else { &[][..] };
        let capsule = self.capsule(&sqe, inline);
        self.send(&capsule);
        let mut data = Vec::new();
        loop {
            let p = self.recv().expect("the target answers");
            match p.h.pdu_type {
                PduType::R2t => {
                    let dh = DataHeader::decode(&p.bytes).unwrap();
                    assert_eq!(dh.cccid, sqe.cid);
                    let (start, end) = (dh.offset as usize, (dh.offset + dh.length) as usize);
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
                        self.send(&pdu);
                        at += n;
                    }
                }
                PduType::C2hData => {
                    let dh = DataHeader::decode(&p.bytes).unwrap();
                    assert_eq!(dh.cccid, sqe.cid);
                    assert_eq!(dh.offset as usize, data.len());
                    data.extend_from_slice(p.data());
                    if p.h.flags & flags::SUCCESS != 0 {
                        return Done {
                            cqe: Cqe {
                                cid: sqe.cid,
                                ..Cqe::default()
                            },
                            data,
                            by_success_flag: true,
                        };
                    }
                }
                PduType::CapsuleResp => {
                    let cqe = pdu::capsule_cqe(&p.bytes).unwrap();
                    assert_eq!(cqe.cid, sqe.cid, "a response for another command");
                    return Done {
                        cqe,
                        data,
                        by_success_flag: false,
                    };
                }
                other => panic!("unexpected {other:?}: {p:?}"),
            }
        }
    }

    pub fn connect(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
        cntlid: u16,
        kato: u32,
    ) -> Done {
        let cmd = ConnectCmd {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: if self.sqflow_off {
                fabrics::CATTR_DISABLE_SQFLOW
            } else {
                0
            },
            kato,
        };
        let data = ConnectData {
            hostid: [0x11; 16],
            cntlid,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        }
        .encode();
        let sqe = cmd.to_sqe(0, [0; 16]);
        self.run(sqe, &data, 0, 8192)
    }

    /// Admin Connect (dynamic controller) and enable: returns the controller ID.
    pub fn admin(&mut self, subnqn: &str, kato: u32) -> u16 {
        let d = self.connect(subnqn, HOSTNQN, 0, CNTLID_DYNAMIC, kato);
        assert!(d.status().is_success(), "admin connect: {:?}", d.status());
        let cntlid = d.cqe.dw0 as u16;
        let cc = self.prop_get(registers::CC, false);
        self.prop_set(registers::CC, cc | 0x46_0001);
        let csts = self.prop_get(registers::CSTS, false);
        assert_eq!(csts & 1, 1, "CSTS.RDY after CC.EN");
        cntlid
    }

    pub fn prop_get(&mut self, offset: u32, wide: bool) -> u64 {
        let mut sqe = Sqe {
            opcode: fabrics::OPCODE,
            nsid: fabrics::PROPERTY_GET as u32,
            ..Sqe::default()
        };
        sqe.cdw[0] = wide as u32;
        sqe.cdw[1] = offset;
        let d = self.run(sqe, &[], 0, 0);
        assert!(
            d.status().is_success(),
            "property get {offset:#x}: {:?}",
            d.status()
        );
        d.cqe.dw0 as u64 | (d.cqe.dw1 as u64) << 32
    }

    pub fn prop_set(&mut self, offset: u32, value: u64) {
        let mut sqe = Sqe {
            opcode: fabrics::OPCODE,
            nsid: fabrics::PROPERTY_SET as u32,
            ..Sqe::default()
        };
        sqe.cdw[1] = offset;
        sqe.cdw[2] = value as u32;
        sqe.cdw[3] = (value >> 32) as u32;
        let d = self.run(sqe, &[], 0, 0);
        assert!(
            d.status().is_success(),
            "property set {offset:#x}: {:?}",
            d.status()
        );
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> Done {
        let mut sqe = Sqe {
            opcode: tandem::nvme::admin::IDENTIFY,
            nsid,
            ..Sqe::default()
        };
        sqe.cdw[0] = cns as u32;
        self.run(sqe, &[], 4096, 0)
    }

    pub fn get_log(&mut self, lid: u8, offset: u64, len: usize) -> Done {
        let mut sqe = Sqe {
            opcode: tandem::nvme::admin::GET_LOG_PAGE,
            nsid: u32::MAX,
            ..Sqe::default()
        };
        let numd = (len / 4 - 1) as u32;
        sqe.cdw[0] = lid as u32 | (numd & 0xFFFF) << 16;
        sqe.cdw[1] = numd >> 16;
        sqe.cdw[2] = offset as u32;
        sqe.cdw[3] = (offset >> 32) as u32;
        self.run(sqe, &[], len, 0)
    }

    pub fn write(&mut self, nsid: u32, slba: u64, block: usize, data: &[u8]) -> Done {
        let sqe = rw_sqe(
            tandem::nvme::io::WRITE,
            nsid,
            slba,
            (data.len() / block) as u32,
        );
        self.run(sqe, data, 0, 8192)
    }

    pub fn read(&mut self, nsid: u32, slba: u64, block: usize, len: usize) -> Done {
        let sqe = rw_sqe(tandem::nvme::io::READ, nsid, slba, (len / block) as u32);
        self.run(sqe, &[], len, 0)
    }
}
