//! Why a packet got its verdict. Every return path of the XDP program counts
//! exactly one reason, so the reason counters add up to the packets seen.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed, the policy is about IP.
    NonIp = 0,
    /// A rule with action `accept` matched.
    RuleAccept = 1,
    /// A rule with action `drop` matched.
    RuleDrop = 2,
    /// No rule matched; the policy's default is `accept`.
    DefaultAccept = 3,
    /// No rule matched; the policy's default is `drop`.
    DefaultDrop = 4,
    /// Frame too short for its Ethernet or VLAN headers.
    MalformedL2 = 5,
    /// More VLAN tags than `MAX_VLAN_TAGS`.
    TooManyVlans = 6,
    /// Truncated or invalid IPv4/IPv6 header (version, IHL, lengths).
    MalformedL3 = 7,
    /// More IPv6 extension headers than `MAX_IPV6_EXT_HEADERS`.
    Ipv6ExtLimit = 8,
    /// Truncated TCP/UDP/ICMP header, or a TCP data offset below 5.
    MalformedL4 = 9,
    /// A non-first IP fragment: it has no transport header to match, so the
    /// policy's `fragments` setting decides. Dropped.
    FragmentDrop = 10,
    /// A non-first IP fragment, passed by `fragments = "accept"`.
    FragmentAccept = 11,
    /// No policy loaded yet (the controller writes it before attaching, so
    /// this is only seen in tests); passed.
    NoPolicy = 12,
    /// The policy maps were inconsistent (a bug): the packet was passed.
    Internal = 13,
    /// A packet of a known flow, accepted by `established = "accept"`.
    Established = 14,
    /// An ICMP error about a known flow, accepted by `related = "accept"`.
    Related = 15,
    /// Established or related, dropped by `established`/`related = "drop"`.
    StateDrop = 16,
    /// Invalid, but passed by `invalid = "accept"`.
    InvalidAccept = 17,
    /// Impossible TCP flags: SYN+FIN, SYN+RST, and any segment but a SYN or
    /// an RST without ACK (FIN, PSH or URG alone, NULL, XMAS).
    InvalidFlags = 18,
    /// A TCP packet other than a SYN with no flow (e.g. an unsolicited ACK).
    InvalidNoFlow = 19,
    /// A SYN-ACK that answers no SYN the table knows.
    InvalidSynAck = 20,
    /// An RST whose sequence number is outside the receiver's window (RFC 5961).
    InvalidRst = 21,
    /// A TCP packet that does not fit its flow's state (e.g. a SYN in an established flow).
    InvalidState = 22,
    /// An ICMP error about no known flow.
    InvalidIcmp = 23,
    /// Egress (TC): a packet that opened a flow (the host's SYN, UDP or ping).
    EgressNew = 24,
    /// Egress: a packet of a known flow, or invalid (egress is never dropped).
    EgressTracked = 25,
    /// Egress: not tracked (not IP, malformed, fragments, other protocols).
    EgressUntracked = 26,
    /// A SYN to a service in cookie mode, answered from XDP with a cookie
    /// SYN-ACK (XDP_TX); the host never sees it.
    CookieSent = 27,
    /// An ACK of no flow whose cookie validated: the flow is created and
    /// the ACK goes on to be handed to the listener.
    CookieValid = 28,
    /// An ACK of no flow to a cookie service whose cookie did not validate.
    CookieInvalid = 29,
    /// A SYN for cookie mode that cannot be answered in place (no room to
    /// grow the frame); passed to the host, which answers it.
    CookieFallback = 30,
    /// TC ingress: a validated cookie ACK handed to its listener.
    HandoffDone = 31,
    /// TC ingress: no listener for a validated cookie ACK; the host answers
    /// with an RST, as for any closed port.
    HandoffNoListener = 32,
    /// TC ingress: the kernel refused the hand-off (e.g. a sysctl disables
    /// an option the cookie carries); the host answers the bare ACK.
    HandoffFailed = 33,
    /// A TCP segment of a known flow outside the receiver's window (or
    /// acknowledging data never sent), as nf_conntrack's `tcp_in_window`
    /// judges it: never a state change.
    InvalidWindow = 34,
    /// Ingress: a packet claiming to come from this host's own side of a
    /// flow (the host only ever sends on egress): spoofed.
    InvalidDirection = 35,
    /// An ACK of no flow to a cookie port that the policy would not have
    /// answered with a cookie (an earlier drop rule, or a source outside
    /// the cookie rule): dropped before any cookie is checked.
    CookieNotAdmitted = 36,
    /// A SYN for a cookie service from or to a broadcast, multicast,
    /// loopback or unspecified address: never answered (no reflection).
    CookieMartian = 37,
    /// A validated cookie ACK that could not carry its hand-off mark
    /// (the driver gives XDP no metadata room): dropped, and cookies stop
    /// until the controller is restarted (SYNs are left to the host).
    HandoffNoMeta = 38,
    /// A new connection (or flow) refused by its rule's per-source `limit`:
    /// dropped, no state created.
    RateLimited = 39,
    /// A new TCP connection refused because its source prefix has the
    /// rule's `max_conns` proven connections open: dropped, no state.
    ConnLimited = 40,
}

/// Number of reason counters (the map's size).
pub const REASON_COUNT: u32 = 41;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::NonIp,
        Reason::RuleAccept,
        Reason::RuleDrop,
        Reason::DefaultAccept,
        Reason::DefaultDrop,
        Reason::MalformedL2,
        Reason::TooManyVlans,
        Reason::MalformedL3,
        Reason::Ipv6ExtLimit,
        Reason::MalformedL4,
        Reason::FragmentDrop,
        Reason::FragmentAccept,
        Reason::NoPolicy,
        Reason::Internal,
        Reason::Established,
        Reason::Related,
        Reason::StateDrop,
        Reason::InvalidAccept,
        Reason::InvalidFlags,
        Reason::InvalidNoFlow,
        Reason::InvalidSynAck,
        Reason::InvalidRst,
        Reason::InvalidState,
        Reason::InvalidIcmp,
        Reason::EgressNew,
        Reason::EgressTracked,
        Reason::EgressUntracked,
        Reason::CookieSent,
        Reason::CookieValid,
        Reason::CookieInvalid,
        Reason::CookieFallback,
        Reason::HandoffDone,
        Reason::HandoffNoListener,
        Reason::HandoffFailed,
        Reason::InvalidWindow,
        Reason::InvalidDirection,
        Reason::CookieNotAdmitted,
        Reason::CookieMartian,
        Reason::HandoffNoMeta,
        Reason::RateLimited,
        Reason::ConnLimited,
    ];

    /// Name shown by `stats` and used in its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NonIp => "non_ip",
            Reason::RuleAccept => "rule_accept",
            Reason::RuleDrop => "rule_drop",
            Reason::DefaultAccept => "default_accept",
            Reason::DefaultDrop => "default_drop",
            Reason::MalformedL2 => "malformed_l2",
            Reason::TooManyVlans => "too_many_vlans",
            Reason::MalformedL3 => "malformed_l3",
            Reason::Ipv6ExtLimit => "ipv6_ext_limit",
            Reason::MalformedL4 => "malformed_l4",
            Reason::FragmentDrop => "fragment_drop",
            Reason::FragmentAccept => "fragment_accept",
            Reason::NoPolicy => "no_policy",
            Reason::Internal => "internal",
            Reason::Established => "established",
            Reason::Related => "related",
            Reason::StateDrop => "state_drop",
            Reason::InvalidAccept => "invalid_accept",
            Reason::InvalidFlags => "invalid_flags",
            Reason::InvalidNoFlow => "invalid_no_flow",
            Reason::InvalidSynAck => "invalid_synack",
            Reason::InvalidRst => "invalid_rst",
            Reason::InvalidState => "invalid_state",
            Reason::InvalidIcmp => "invalid_icmp",
            Reason::EgressNew => "egress_new",
            Reason::EgressTracked => "egress_tracked",
            Reason::EgressUntracked => "egress_untracked",
            Reason::CookieSent => "cookie_sent",
            Reason::CookieValid => "cookie_valid",
            Reason::CookieInvalid => "cookie_invalid",
            Reason::CookieFallback => "cookie_fallback",
            Reason::HandoffDone => "handoff_done",
            Reason::HandoffNoListener => "handoff_no_listener",
            Reason::HandoffFailed => "handoff_failed",
            Reason::InvalidWindow => "invalid_window",
            Reason::InvalidDirection => "invalid_direction",
            Reason::CookieNotAdmitted => "cookie_not_admitted",
            Reason::CookieMartian => "cookie_martian",
            Reason::HandoffNoMeta => "handoff_no_meta",
            Reason::RateLimited => "rate_limited",
            Reason::ConnLimited => "conn_limited",
        }
    }

    /// Whether packets counted under this reason were dropped.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::RuleDrop
                | Reason::DefaultDrop
                | Reason::MalformedL2
                | Reason::TooManyVlans
                | Reason::MalformedL3
                | Reason::Ipv6ExtLimit
                | Reason::MalformedL4
                | Reason::FragmentDrop
                | Reason::StateDrop
                | Reason::InvalidFlags
                | Reason::InvalidNoFlow
                | Reason::InvalidSynAck
                | Reason::InvalidRst
                | Reason::InvalidState
                | Reason::InvalidIcmp
                | Reason::CookieInvalid
                | Reason::InvalidWindow
                | Reason::InvalidDirection
                | Reason::CookieNotAdmitted
                | Reason::CookieMartian
                | Reason::HandoffNoMeta
                | Reason::RateLimited
                | Reason::ConnLimited
        )
    }
}
