//! Tests of [`super`]: refusals, accessors, relay round trips, truncations
//! and random bytes; and the builders the other DHCPv6 tests use.

use super::*;
use dhcproto::v6::{IAAddr, UserClass, VendorClass, IANA, ORO};

/// DUID-LL, Ethernet, 52:54:00:0e:00:01.
pub(crate) const DUID_LL: [u8; 10] = [0, 3, 0, 1, 0x52, 0x54, 0, 0x0e, 0, 1];

/// A client message of `kind` with these options (xid 01 02 03).
pub(crate) fn message(kind: MessageType, opts: Vec<DhcpOption>) -> Message {
    let mut msg = Message::new_with_id(kind, [1, 2, 3]);
    msg.set_opts(opts.into_iter().collect());
    msg
}

pub(crate) fn vendor_class(text: &str) -> DhcpOption {
    DhcpOption::VendorClass(VendorClass {
        num: 343,
        data: vec![text.as_bytes().to_vec()],
    })
}

pub(crate) fn user_class(text: &str) -> DhcpOption {
    DhcpOption::UserClass(UserClass {
        data: vec![text.as_bytes().to_vec()],
    })
}

pub(crate) fn hop(link: &str, peer: &str, iface: Option<&[u8]>, mac: Option<MacAddr>) -> Hop {
    Hop {
        hop_count: 0,
        link_addr: link.parse().unwrap(),
        peer_addr: peer.parse().unwrap(),
        interface_id: iface.map(<[u8]>::to_vec),
        client_link_layer: mac,
    }
}

/// The datagram a server receives: `msg` inside one Relay-Forw per hop
/// (outermost first, as in [`Request6::hops`]).
pub(crate) fn datagram(msg: &Message, hops: &[Hop]) -> Vec<u8> {
    let layer = |inner: Vec<u8>, hop: &Hop| {
        let mut out = relay_layer(MSG_RELAY_FORW, hop, &inner);
        if let Some(mac) = hop.client_link_layer {
            let data = [&[0, 1][..], &mac.0].concat();
            put_option(&mut out, OPT_CLIENT_LINK_LAYER, &data);
        }
        out
    };
    hops.iter().rev().fold(message_bytes(msg), layer)
}

/// `msg` through `hops`, parsed.
pub(crate) fn request(msg: &Message, hops: &[Hop]) -> Request6 {
    parse(&datagram(msg, hops)).expect("test request parses")
}

fn tlv(code: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_option(&mut out, code, data);
    out
}

fn raw(kind: u8, opts: &[Vec<u8>]) -> Vec<u8> {
    [vec![kind, 1, 2, 3], opts.concat()].concat()
}

fn client_id() -> Vec<u8> {
    tlv(1, &DUID_LL)
}

fn ia_na(iaid: u32, inner: &[Vec<u8>]) -> Vec<u8> {
    let mut data = iaid.to_be_bytes().to_vec();
    data.extend_from_slice(&[0; 8]);
    data.extend(inner.concat());
    tlv(3, &data)
}

fn ia_addr(last: u8, inner: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last))
        .octets()
        .to_vec();
    data.extend_from_slice(&[0; 8]);
    data.extend(inner.concat());
    tlv(5, &data)
}

fn relay_forw(opts: &[Vec<u8>]) -> Vec<u8> {
    [vec![MSG_RELAY_FORW, 0], vec![0; 32], opts.concat()].concat()
}

/// `inner` wrapped in `n` Relay-Forw layers.
fn relayed(n: usize, inner: Vec<u8>) -> Vec<u8> {
    (0..n).fold(inner, |inner, _| relay_forw(&[tlv(OPT_RELAY_MSG, &inner)]))
}

fn solicit() -> Vec<u8> {
    raw(1, &[client_id()])
}

#[test]
fn refusals() {
    use ParseError::*;
    let many_ias: Vec<_> = (0..9).map(|i| ia_na(i, &[])).collect();
    let many_addrs: Vec<_> = (0..9).map(|i| ia_addr(i, &[])).collect();
    let mut truncated = solicit();
    truncated.extend_from_slice(&[0, 16, 0, 40, b'P']);
    let mut half_header = solicit();
    half_header.push(0);
    let bad_utf8 = tlv(13, &[0, 0, 0xff, 0xfe]);
    #[rustfmt::skip]
    let table: Vec<(&str, Vec<u8>, ParseError)> = vec![
        ("over 4096 bytes",           [solicit(), vec![0; 4079]].concat(), TooLarge(4097)),
        ("empty",                     vec![],                               TooShort(0)),
        ("three bytes",               vec![1, 2, 3],                        TooShort(3)),
        ("option past the end",       truncated,                            TruncatedOption { code: 16, offset: 18 }),
        ("half an option header",     half_header,                          TruncatedOption { code: 0, offset: 18 }),
        ("Advertise",                 raw(2, &[client_id()]),               ServerOnly(MessageType::Advertise)),
        ("Reply",                     raw(7, &[client_id()]),               ServerOnly(MessageType::Reply)),
        ("Reconfigure",               raw(10, &[client_id()]),              ServerOnly(MessageType::Reconfigure)),
        ("Relay-Repl",                [vec![13, 0], vec![0; 32]].concat(),  ServerOnly(MessageType::RelayRepl)),
        ("Relay-Repl inside a Relay-Forw", relayed(1, [vec![13, 0], vec![0; 32]].concat()), ServerOnly(MessageType::RelayRepl)),
        ("Reply inside a Relay-Forw", relayed(2, raw(7, &[client_id()])),   ServerOnly(MessageType::Reply)),
        ("nine relays",               relayed(9, solicit()),                TooManyHops),
        ("short relay header",        [vec![12, 0], vec![0; 18]].concat(),  TooShort(20)),
        ("Relay-Forw without 9",      relay_forw(&[tlv(18, b"eth0")]),      NoRelayMessage { hop: 0 }),
        ("inner Relay-Forw without 9", relay_forw(&[tlv(9, &relay_forw(&[]))]), NoRelayMessage { hop: 1 }),
        ("relay option past the end", relay_forw(&[vec![0, 9, 0, 9, 1]]),   TruncatedOption { code: 9, offset: 34 }),
        ("nine IA_NAs",               raw(1, &[vec![client_id()], many_ias].concat()), TooManyIaNas(9)),
        ("nine addresses in an IA",   raw(1, &[client_id(), ia_na(7, &many_addrs)]), TooManyAddresses { iaid: 7, count: 9 }),
        ("Solicit without 1",         raw(1, &[]),                          NoClientId(MessageType::Solicit)),
        ("Request without 1",         raw(3, &[]),                          NoClientId(MessageType::Request)),
        ("Confirm without 1",         raw(4, &[]),                          NoClientId(MessageType::Confirm)),
        ("Renew without 1",           raw(5, &[]),                          NoClientId(MessageType::Renew)),
        ("Rebind without 1",          raw(6, &[]),                          NoClientId(MessageType::Rebind)),
        ("Release without 1",         raw(8, &[]),                          NoClientId(MessageType::Release)),
        ("Decline without 1",         raw(9, &[]),                          NoClientId(MessageType::Decline)),
        ("131-byte Client Identifier", raw(1, &[tlv(1, &[0; 131])]),        ClientIdLength(131)),
        ("2-byte Client Identifier",  raw(11, &[tlv(1, &[0, 3])]),          ClientIdLength(2)),
        ("vendor class of 2 bytes",   raw(1, &[client_id(), tlv(16, &[0, 0])]), BadOption { code: 16, len: 2 }),
        ("vendor class item overrun", raw(1, &[client_id(), tlv(16, &[0, 0, 1, 87, 0, 9, b'P'])]), BadOption { code: 16, len: 7 }),
        ("user class item overrun",   raw(1, &[client_id(), tlv(15, &[0, 5, b'i'])]), BadOption { code: 15, len: 3 }),
        ("authentication of 5 bytes", raw(1, &[client_id(), tlv(11, &[0; 5])]), BadOption { code: 11, len: 5 }),
        ("status code of 1 byte",     raw(1, &[client_id(), tlv(13, &[0])]), BadOption { code: 13, len: 1 }),
        ("preference of 2 bytes",     raw(1, &[client_id(), tlv(7, &[0, 1])]), BadOption { code: 7, len: 2 }),
        ("elapsed time of 1 byte",    raw(1, &[client_id(), tlv(8, &[1])]), BadOption { code: 8, len: 1 }),
        ("rapid commit with data",    raw(1, &[client_id(), tlv(14, &[1])]), BadOption { code: 14, len: 1 }),
        ("odd ORO",                   raw(1, &[client_id(), tlv(6, &[0, 59, 0])]), BadOption { code: 6, len: 3 }),
        ("Relay Message from a client", raw(1, &[client_id(), tlv(9, &solicit())]), BadOption { code: 9, len: 18 }),
        ("IA_NA of 8 bytes",          raw(1, &[client_id(), tlv(3, &[0; 8])]), BadOption { code: 3, len: 8 }),
        ("bad length inside an IA",   raw(1, &[client_id(), ia_na(1, &[ia_addr(1, &[tlv(7, &[])])])]), BadOption { code: 7, len: 0 }),
        ("IA_NA three deep",          raw(1, &[client_id(), ia_na(1, &[ia_na(2, &[ia_na(3, &[])])])]), BadOption { code: 3, len: 12 }),
        ("status text not UTF-8",     raw(1, &[client_id(), bad_utf8.clone()]), Undecodable { code: 13, reason: "error converting to UTF-8 invalid utf-8 sequence of 1 bytes from index 0".into() }),
        ("one dropped inside an IA",  raw(1, &[client_id(), ia_na(1, &[bad_utf8])]), Undecodable { code: 3, reason: "sub-options were dropped".into() }),
    ];
    for (name, bytes, want) in table {
        assert_eq!(parse(&bytes).unwrap_err(), want, "{name}");
    }
    assert!(parse(&relayed(8, solicit())).is_ok(), "eight relays");
    assert!(
        parse(&raw(11, &[])).is_ok(),
        "Information-Request needs no 1"
    );
    let fits = [solicit(), tlv(0xffff, &[0; 4096 - 22])].concat();
    assert!(parse(&fits).is_ok(), "exactly 4096 bytes");
}

fn ovmf_solicit() -> Message {
    message(
        MessageType::Solicit,
        vec![
            DhcpOption::ClientId(DUID_LL.to_vec()),
            DhcpOption::IANA(IANA {
                id: 0x0e01,
                t1: 0,
                t2: 0,
                opts: vec![DhcpOption::IAAddr(IAAddr {
                    addr: "2001:db8::5".parse().unwrap(),
                    preferred_life: 0,
                    valid_life: 0,
                    opts: Default::default(),
                })]
                .into_iter()
                .collect(),
            }),
            DhcpOption::ORO(ORO {
                opts: [59u16, 60, 23, 16].map(Into::into).to_vec(),
            }),
            DhcpOption::ElapsedTime(7),
            vendor_class("PXEClient:Arch:00007:UNDI:003000"),
            user_class("iPXE"),
            DhcpOption::ClientArchType(vec![dhcproto::v6::Architecture(7)]),
            DhcpOption::RapidCommit,
        ],
    )
}

#[test]
fn every_accessor() {
    let req = request(&ovmf_solicit(), &[]);
    assert_eq!(req.msg_type(), MessageType::Solicit);
    assert_eq!(req.xid(), [1, 2, 3]);
    assert_eq!(req.client_id(), Some(&DUID_LL[..]));
    assert_eq!(req.server_id(), None);
    assert_eq!(
        req.ia_nas(),
        [IaNaRequest {
            iaid: 0x0e01,
            addresses: vec!["2001:db8::5".parse().unwrap()],
        }]
    );
    assert_eq!(
        req.vendor_class(),
        Some((343, "PXEClient:Arch:00007:UNDI:003000".into()))
    );
    assert_eq!(req.user_classes(), ["iPXE"]);
    assert_eq!(req.arch_types(), [7]);
    assert_eq!(req.requested(), [59, 60, 23, 16]);
    assert!(req.rapid_commit());
    assert_eq!(req.elapsed_ms(), Some(70));
    assert!(!req.relayed());
    assert_eq!(req.innermost_hop(), None);
    let long = "x".repeat(300);
    let req = request(
        &message(MessageType::InformationRequest, vec![vendor_class(&long)]),
        &[],
    );
    assert_eq!(req.vendor_class().map(|(_, t)| t.len()), Some(128));
}

/// Reads Relay-Repl layers back: each layer's header and Interface-ID,
/// outermost first, then the reply inside.
fn unwrap_repl(mut bytes: &[u8]) -> (Vec<Hop>, Message) {
    let mut hops = Vec::new();
    while bytes[0] == MSG_RELAY_REPL {
        let mut hop = hop("::", "::", None, None);
        hop.hop_count = bytes[1];
        hop.link_addr = ipv6(&bytes[2..18]);
        hop.peer_addr = ipv6(&bytes[18..34]);
        let opts = walk(&bytes[RELAY_HEADER..], 0).unwrap();
        hop.interface_id = opts
            .iter()
            .find(|o| o.code == OPT_INTERFACE_ID)
            .map(|o| o.data.to_vec());
        bytes = opts.iter().find(|o| o.code == OPT_RELAY_MSG).unwrap().data;
        hops.push(hop);
    }
    (hops, Message::decode(&mut Decoder::new(bytes)).unwrap())
}

#[test]
fn relayed_solicit_round_trips_through_one_and_two_hops() {
    let mac: MacAddr = "52:54:00:0e:00:01".parse().unwrap();
    let near = Hop {
        hop_count: 0,
        ..hop(
            "2001:db8:1::1",
            "fe80::5054:ff:fe0e:1",
            Some(b"port 7"),
            Some(mac),
        )
    };
    let far = Hop {
        hop_count: 1,
        ..hop("::", "2001:db8:1::1", None, None)
    };
    for hops in [vec![near.clone()], vec![far, near]] {
        let req = request(&ovmf_solicit(), &hops);
        assert_eq!(req.hops, hops);
        assert!(req.relayed());
        assert_eq!(req.innermost_hop().unwrap().client_link_layer, Some(mac));
        assert_eq!(req.client_id(), Some(&DUID_LL[..]));

        let mut reply = message(MessageType::Advertise, vec![vendor_class("HTTPClient")]);
        reply.set_xid(req.xid());
        reply
            .opts_mut()
            .insert(DhcpOption::ServerId(vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 1]));
        let (echoed, inner) = unwrap_repl(&encode(&req, &reply));
        let want: Vec<Hop> = hops
            .iter()
            .map(|h| Hop {
                client_link_layer: None,
                ..h.clone()
            })
            .collect();
        assert_eq!(echoed, want, "addresses and Interface-ID echoed");
        assert_eq!(inner, reply);
    }
}

#[test]
fn encode_writes_class_options_dhcproto_gets_wrong() {
    let reply = message(
        MessageType::Reply,
        vec![vendor_class("HTTPClient"), user_class("iPXE")],
    );
    let ours = encode(
        &request(&message(MessageType::InformationRequest, vec![]), &[]),
        &reply,
    );
    assert_eq!(Message::decode(&mut Decoder::new(&ours)).unwrap(), reply);
    // dhcproto 0.15 writes the item count as option 15's length: when
    // this fails, it is fixed and `message_bytes` can use it again.
    let theirs = reply.to_vec().unwrap();
    assert_eq!(theirs[4..8], [0, 15, 0, 1]);
}

fn two_hop_solicit() -> Vec<u8> {
    let hops = [
        hop("::", "2001:db8:1::1", Some(b"x"), None),
        hop(
            "2001:db8:1::1",
            "fe80::1",
            None,
            Some(MacAddr([2, 0, 0, 0, 0, 1])),
        ),
    ];
    datagram(&ovmf_solicit(), &hops)
}

#[test]
fn every_truncation_is_an_answer_not_a_panic() {
    let full = two_hop_solicit();
    assert!(parse(&full).is_ok());
    for n in 0..full.len() {
        let _ = parse(&full[..n]);
    }
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = two_hop_solicit();
    for i in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(first) = bytes.first_mut() {
            // Mostly message types a client sends, so options get read.
            *first = [1, 3, 11, 12][i % 4];
        }
        let _ = parse(&bytes);
        let mut mutated = valid.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % mutated.len();
            mutated[at] = next() as u8;
        }
        let _ = parse(&mutated);
    }
}
