//! The serde layer: the TOML schema, every value with its byte span.

use super::*;

// ---------------------------------------------------------------------------
// Raw (serde) layer
// ---------------------------------------------------------------------------

/// The policy's top level, assembled table by table (see `Validator::raw`).
pub(super) struct RawPolicy {
    pub(super) settings: Option<RawSettings>,
    pub(super) rule: Vec<Spanned<RawRule>>,
    pub(super) alert: Vec<Spanned<crate::alerts::RawAlert>>,
    pub(super) set: Vec<Spanned<RawSet>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSet {
    pub(super) name: Spanned<String>,
    #[serde(rename = "type")]
    pub(super) kind: Spanned<String>,
    pub(super) elements: Option<Spanned<Vec<Spanned<SetItem>>>>,
    pub(super) timeout: Option<Spanned<DurationText>>,
    pub(super) size: Option<Spanned<i64>>,
}

/// `"10m"` or a number of seconds; checked later (see `parse_duration`).
pub(super) struct DurationText(pub(super) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10m\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) default: Option<Action>,
    pub(super) fragments: Option<Action>,
    pub(super) established: Option<StateAction>,
    pub(super) related: Option<StateAction>,
    pub(super) invalid: Option<StateAction>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) syncookie: Option<RawSyncookieSettings>,
    pub(super) events: Option<RawEvents>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    pub(super) drops: Option<bool>,
    pub(super) syns: Option<bool>,
    pub(super) sample: Option<Spanned<i64>>,
    pub(super) per_second: Option<Spanned<i64>>,
    pub(super) log_per_second: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyncookieSettings {
    pub(super) auto_on_rate: Option<Spanned<i64>>,
    pub(super) auto_off_rate: Option<Spanned<i64>>,
    pub(super) auto_hold_secs: Option<Spanned<i64>>,
    pub(super) key_rotation_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) tcp_syn_sent: Option<Spanned<i64>>,
    pub(super) tcp_syn_recv: Option<Spanned<i64>>,
    pub(super) tcp_established: Option<Spanned<i64>>,
    pub(super) tcp_fin_wait: Option<Spanned<i64>>,
    pub(super) tcp_time_wait: Option<Spanned<i64>>,
    pub(super) tcp_close: Option<Spanned<i64>>,
    pub(super) udp: Option<Spanned<i64>>,
    pub(super) udp_stream: Option<Spanned<i64>>,
    pub(super) icmp: Option<Spanned<i64>>,
}

/// Longest idle timeout accepted: one year, in seconds.
pub const MAX_TIMEOUT: u32 = 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Spanned<String>,
    pub(super) proto: Option<Spanned<Proto>>,
    pub(super) src: Option<Spanned<OneOrMany<AddrText>>>,
    pub(super) dst: Option<Spanned<OneOrMany<AddrText>>>,
    pub(super) sport: Option<Spanned<OneOrMany<PortItem>>>,
    pub(super) dport: Option<Spanned<OneOrMany<PortItem>>>,
    pub(super) tcp_flags: Option<Spanned<String>>,
    pub(super) icmp_type: Option<Spanned<i64>>,
    pub(super) icmp_code: Option<Spanned<i64>>,
    pub(super) state: Option<Spanned<OneOrMany<StateText>>>,
    pub(super) action: Action,
    pub(super) syncookie: Option<Spanned<Syncookie>>,
    pub(super) log: Option<bool>,
    pub(super) limit: Option<Spanned<RawLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub(super) rate: Option<Spanned<String>>,
    pub(super) max_conns: Option<Spanned<i64>>,
    pub(super) ban: Option<Spanned<String>>,
    pub(super) burst: Option<Spanned<i64>>,
    pub(super) per: Option<Spanned<String>>,
    pub(super) per6: Option<Spanned<String>>,
}

/// A list item kind that also says what it expects, so that type errors
/// read "expected a port ..." rather than serde's generic wording.
pub(super) trait Item: Sized {
    const EXPECTING: &'static str;
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E>;
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E>;
}

/// Address text; parsed later so that all bad CIDRs are reported with spans.
pub(super) struct AddrText(pub(super) String);

impl Item for AddrText {
    const EXPECTING: &'static str = "an address or CIDR string such as \"10.0.0.0/8\"";
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E> {
        Err(E::invalid_type(de::Unexpected::Signed(v), &Self::EXPECTING))
    }
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E> {
        Ok(AddrText(v.to_owned()))
    }
}

/// A `state` entry; checked later so that every bad name is located.
pub(super) struct StateText(pub(super) String);

impl Item for StateText {
    const EXPECTING: &'static str = "a connection state name such as \"new\"";
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E> {
        Err(E::invalid_type(de::Unexpected::Signed(v), &Self::EXPECTING))
    }
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E> {
        Ok(StateText(v.to_owned()))
    }
}

pub(super) enum PortItem {
    Num(i64),
    Text(String),
}

impl Item for PortItem {
    const EXPECTING: &'static str = "a port number or a range string such as \"1000-2000\"";
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E> {
        Ok(PortItem::Num(v))
    }
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E> {
        Ok(PortItem::Text(v.to_owned()))
    }
}

/// A set element: an address or prefix string, or (port sets) a port
/// number or range string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SetItem {
    Num(i64),
    Text(String),
}

/// Visitor for one scalar item.
pub(super) struct ItemVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Item> Visitor<'de> for ItemVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        // Beyond i64 is out of any range we accept; keep it negative-free.
        T::from_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_str(v)
    }
}

pub(super) struct ItemDe<T>(T);

impl<'de, T: Item> Deserialize<'de> for ItemDe<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor::<T>(std::marker::PhantomData)).map(ItemDe)
    }
}

/// `x` or `[x, y]`. A single item carries no span of its own; the caller
/// uses the span of the whole value for it.
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<Spanned<T>>),
}

impl<'de, T: Item> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Item> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} or a list of them", T::EXPECTING)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                ItemVisitor::<T>(std::marker::PhantomData).visit_i64(v).map(OneOrMany::One)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ItemVisitor::<T>(std::marker::PhantomData).visit_u64(v).map(OneOrMany::One)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::from_str(v).map(OneOrMany::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<ItemDe<T>>>()? {
                    let span = item.span();
                    items.push(Spanned::new(span, item.into_inner().0));
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V::<T>(std::marker::PhantomData))
    }
}

impl<T> OneOrMany<T> {
    /// Items with their spans; `whole` is the span of the entire value.
    pub(super) fn items(self, whole: Range<usize>) -> Vec<(T, Range<usize>)> {
        match self {
            OneOrMany::One(t) => vec![(t, whole)],
            OneOrMany::Many(v) => v
                .into_iter()
                .map(|s| {
                    let span = s.span();
                    (s.into_inner(), span)
                })
                .collect(),
        }
    }
}

