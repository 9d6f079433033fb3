//! Transport IDs in SPDK's string form: `trtype:TCP adrfam:IPv4 traddr:127.0.0.1
//! trsvcid:4420 subnqn:nqn...` (keys case-insensitive, `ns:N` picks the namespace).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trid {
    pub traddr: String,
    pub trsvcid: String,
    pub subnqn: String,
    pub hostnqn: Option<String>,
    pub nsid: u32,
}

pub fn parse(s: &str) -> Result<Trid, String> {
    let mut traddr = None;
    let mut trsvcid = None;
    let mut subnqn = None;
    let mut hostnqn = None;
    let mut nsid = 1;
    for part in s.split_whitespace() {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?} is not key:value"))?;
        match k.to_ascii_lowercase().as_str() {
            "trtype" if v.eq_ignore_ascii_case("tcp") => {}
            "trtype" => return Err(format!("trtype {v:?} is not supported (TCP is)")),
            "adrfam" if v.eq_ignore_ascii_case("ipv4") || v.eq_ignore_ascii_case("ipv6") => {}
            "adrfam" => return Err(format!("adrfam {v:?} is not IPv4 or IPv6")),
            "traddr" => traddr = Some(v.to_owned()),
            "trsvcid" => trsvcid = Some(v.to_owned()),
            "subnqn" => subnqn = Some(v.to_owned()),
            "hostnqn" => hostnqn = Some(v.to_owned()),
            "ns" => nsid = v.parse().map_err(|_| format!("ns {v:?} is not a number"))?,
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    Ok(Trid {
        traddr: traddr.ok_or("traddr is missing")?,
        trsvcid: trsvcid.unwrap_or_else(|| "4420".into()),
        subnqn: subnqn.ok_or("subnqn is missing")?,
        hostnqn,
        nsid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_transport_ids() {
        let t = parse("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.x ns:2")
            .unwrap();
        assert_eq!(t.traddr, "127.0.0.1");
        assert_eq!(t.trsvcid, "4420");
        assert_eq!(t.subnqn, "nqn.x");
        assert_eq!(t.nsid, 2);
        assert!(parse("trtype:RDMA traddr:1 subnqn:x").is_err());
        assert!(parse("traddr:1").unwrap_err().contains("subnqn"));
        assert!(parse("traddr 1").is_err());
    }
}
