//! How a raft entry and the raft hard state are laid out as weir-wal payloads.
//!
//! The WAL stores opaque bytes by index; these functions are the only place that knows
//! what the bytes of a raft entry and of the WAL's meta blob are. Little endian throughout.
//!
//! Entry payload (format version 1):
//! ```text
//! [version u8 = 1][entry_type u8][term u64][context_len u32][context][data]
//! ```
//! Meta blob (format version 1):
//! ```text
//! [version u8 = 1][term u64][vote u64][commit u64][compacted_index u64][compacted_term u64]
//! [voters_len u32][voters u64 * n][learners_len u32][learners u64 * n]
//! ```
//! The context of a normal entry says what the entry is:
//! ```text
//! empty                                      a payload without idempotency key
//! [1][producer_len u32][producer][seq u64]   a payload with its dedup key
//! [0x10]                                     a consumer cursor; data is
//!                                            [name_len u16][name][position u64]
//! ```
//! Payload entries are what consumers read through `CommittedLog::read`; cursor entries
//! are the raft layer's own (see `ShardLog::cursor`) and are never handed to consumers.
//!
//! Applied state, carried by a snapshot (format version 1): what applying the log up to
//! `applied` built besides the consumers' data: the cursors and the idempotency table.
//! ```text
//! [version u8 = 1][applied u64]
//! [cursors u32] { [name_len u16][name][position u64] }
//! [producers u32] { [producer_len u32][producer][has_floor u8][floor u64]
//!                   [last_used_index u64][runs u32] { [first_seq u64][count u64] } }
//! ```

use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

/// What is wrong with bytes handed to a decoder here: the reason of an
/// [`Error::Corrupt`](crate::Error::Corrupt), which adds the shard and index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    /// Fewer bytes than the layout needs.
    #[error("truncated at byte {at}")]
    Truncated {
        /// where the next field would have started
        at: usize,
    },
    /// An entry payload shorter than its fixed header.
    #[error("entry payload is {len} bytes, shorter than its header")]
    ShortEntry {
        /// the payload's length
        len: usize,
    },
    /// A version byte this code does not know.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// which layout
        what: &'static str,
        /// the version found
        version: u8,
    },
    /// An entry type byte raft does not have.
    #[error("unknown entry type {0}")]
    UnknownEntryType(u8),
    /// An entry's context length past the end of its payload.
    #[error("context length {len} runs past the payload")]
    ContextPastPayload {
        /// the context length read
        len: usize,
    },
    /// A meta blob listing more members than any cluster has.
    #[error("meta lists {n} members, more than any cluster has")]
    TooManyMembers {
        /// how many it lists
        n: usize,
    },
    /// Bytes left over after a complete value.
    #[error("{bytes} trailing bytes after the {what}")]
    Trailing {
        /// which value
        what: &'static str,
        /// how many bytes are left
        bytes: usize,
    },
    /// A string field that is not UTF-8.
    #[error("{what} is not utf-8")]
    NotUtf8 {
        /// which field
        what: &'static str,
    },
    /// A cursor name longer than [`CURSOR_NAME_BYTES_MAX`].
    #[error("cursor name of {len} bytes")]
    CursorNameTooLong {
        /// its length
        len: usize,
    },
    /// A producer of the idempotency table remembering more sequences than the window.
    #[error("producer {producer:?} remembers more than {window} sequences")]
    WindowOverflow {
        /// the producer
        producer: String,
        /// the window ([`crate::DEDUP_WINDOW`])
        window: usize,
    },
}

const ENTRY_VERSION: u8 = 1;
const META_VERSION: u8 = 1;
const ENTRY_HEADER_BYTES: usize = 1 + 1 + 8 + 4;
const _: () = assert!(ENTRY_HEADER_BYTES == 14);

impl Malformed {
    /// The corruption this is in shard `shard` at log index `index` (0 for the meta or
    /// the applied state).
    pub(crate) fn at(self, shard: u32, index: u64) -> crate::Error {
        crate::Error::Corrupt {
            shard,
            index,
            reason: self.to_string(),
        }
    }
}

/// Encodes `e` (without its index, which the WAL keeps) into `out`.
pub(crate) fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(ENTRY_HEADER_BYTES + e.context.len() + e.data.len());
    out.push(ENTRY_VERSION);
    out.push(e.get_entry_type() as u8);
    out.extend_from_slice(&e.term.to_le_bytes());
    out.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.context);
    out.extend_from_slice(&e.data);
}

/// The parts of a decoded entry payload, borrowing from the payload.
pub(crate) struct EntryView<'a> {
    pub entry_type: EntryType,
    pub term: u64,
    pub context: &'a [u8],
    pub data: &'a [u8],
}

/// Decodes an entry payload written by [`encode_entry`].
pub(crate) fn decode_entry(buf: &[u8]) -> Result<EntryView<'_>, Malformed> {
    if buf.len() < ENTRY_HEADER_BYTES {
        return Err(Malformed::ShortEntry { len: buf.len() });
    }
    if buf[0] != ENTRY_VERSION {
        return Err(Malformed::UnknownVersion {
            what: "entry format",
            version: buf[0],
        });
    }
    let entry_type = match buf[1] {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => return Err(Malformed::UnknownEntryType(t)),
    };
    let term = u64::from_le_bytes(buf[2..10].try_into().expect("8 bytes"));
    let ctx_len = u32::from_le_bytes(buf[10..14].try_into().expect("4 bytes")) as usize;
    let rest = &buf[ENTRY_HEADER_BYTES..];
    if rest.len() < ctx_len {
        return Err(Malformed::ContextPastPayload { len: ctx_len });
    }
    Ok(EntryView {
        entry_type,
        term,
        context: &rest[..ctx_len],
        data: &rest[ctx_len..],
    })
}

/// Rebuilds a raft [`Entry`] from its WAL index and payload.
pub(crate) fn to_entry(index: u64, buf: &[u8]) -> Result<Entry, Malformed> {
    let v = decode_entry(buf)?;
    let mut e = Entry::default();
    e.set_entry_type(v.entry_type);
    e.term = v.term;
    e.index = index;
    e.context = v.context.to_vec().into();
    e.data = v.data.to_vec().into();
    Ok(e)
}

/// What the WAL's meta blob holds: everything raft must find again after a restart that is
/// not an entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Meta {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Entries at or below this index were removed; `compacted_term` is the term of that
    /// index (raft needs the term of `first_index - 1`).
    pub compacted_index: u64,
    pub compacted_term: u64,
}

pub(crate) fn encode_meta(m: &Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(META_VERSION);
    for v in [
        m.hard_state.term,
        m.hard_state.vote,
        m.hard_state.commit,
        m.compacted_index,
        m.compacted_term,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for ids in [&m.conf_state.voters, &m.conf_state.learners] {
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids.iter() {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out
}

pub(crate) fn decode_meta(buf: &[u8]) -> Result<Meta, Malformed> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if version != META_VERSION {
        return Err(Malformed::UnknownVersion {
            what: "meta format",
            version,
        });
    }
    let mut m = Meta::default();
    m.hard_state.term = r.u64()?;
    m.hard_state.vote = r.u64()?;
    m.hard_state.commit = r.u64()?;
    m.compacted_index = r.u64()?;
    m.compacted_term = r.u64()?;
    for which in 0..2 {
        let n = r.u32()? as usize;
        if n > 1024 {
            return Err(Malformed::TooManyMembers { n });
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(r.u64()?);
        }
        if which == 0 {
            m.conf_state.voters = ids;
        } else {
            m.conf_state.learners = ids;
        }
    }
    r.finish("meta")?;
    Ok(m)
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl Reader<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let end = self.pos.saturating_add(n);
        if end > self.buf.len() {
            return Err(Malformed::Truncated { at: self.pos });
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A UTF-8 string of `n` bytes, the field `what`.
    pub(crate) fn str(&mut self, n: usize, what: &'static str) -> Result<String, Malformed> {
        std::str::from_utf8(self.take(n)?)
            .map(str::to_owned)
            .map_err(|_| Malformed::NotUtf8 { what })
    }
    /// Checks that the value `what` ended at the end of the bytes.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), Malformed> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            bytes => Err(Malformed::Trailing { what, bytes }),
        }
    }
}

const STATE_VERSION: u8 = 1;

/// Encodes the applied state (see the module docs): `cursors` sorted by name, so equal
/// states encode equally.
pub(crate) fn encode_state(
    applied: u64,
    cursors: &std::collections::HashMap<String, u64>,
    dedup: &crate::DedupTable,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(STATE_VERSION);
    out.extend_from_slice(&applied.to_le_bytes());
    let mut names: Vec<_> = cursors.iter().collect();
    names.sort();
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for (name, position) in names {
        out.extend_from_slice(&encode_cursor(name, *position));
    }
    dedup.encode(&mut out);
    out
}

/// The applied state decoded: (applied index, cursors, idempotency table).
pub(crate) type AppliedState = (
    u64,
    std::collections::HashMap<String, u64>,
    crate::DedupTable,
);

/// Decodes what [`encode_state`] wrote; the table remembers at most `producers_max`.
pub(crate) fn decode_state(buf: &[u8], producers_max: usize) -> Result<AppliedState, Malformed> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if version != STATE_VERSION {
        return Err(Malformed::UnknownVersion {
            what: "applied-state format",
            version,
        });
    }
    let applied = r.u64()?;
    let n = r.u32()? as usize;
    let mut cursors = std::collections::HashMap::new();
    for _ in 0..n {
        let len = r.u16()? as usize;
        if len > CURSOR_NAME_BYTES_MAX {
            return Err(Malformed::CursorNameTooLong { len });
        }
        let name = r.str(len, "cursor name")?;
        cursors.insert(name, r.u64()?);
    }
    let dedup = crate::DedupTable::decode(&mut r, producers_max)?;
    r.finish("applied state")?;
    Ok((applied, cursors, dedup))
}

/// An idempotency key carried in a raft entry's context: the producer (already qualified
/// by tenant by the caller) and its batch sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DedupKey {
    /// Producer identity, unique per tenant (the ingest layer joins tenant and producer id).
    pub producer: String,
    /// The producer's batch sequence number.
    pub sequence: u64,
}

const DEDUP_VERSION: u8 = 1;
/// Context byte of a cursor entry. Distinct from every dedup context version.
pub(crate) const CURSOR_CONTEXT: u8 = 0x10;

/// Whether an entry context marks a cursor entry.
pub(crate) fn is_cursor(ctx: &[u8]) -> bool {
    ctx.first() == Some(&CURSOR_CONTEXT)
}

/// Longest cursor name accepted.
pub const CURSOR_NAME_BYTES_MAX: usize = 256;

/// Encodes a cursor entry's data.
pub(crate) fn encode_cursor(name: &str, position: u64) -> Vec<u8> {
    debug_assert!(name.len() <= CURSOR_NAME_BYTES_MAX);
    let mut out = Vec::with_capacity(2 + name.len() + 8);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out
}

/// Decodes a cursor entry's data written by [`encode_cursor`].
pub(crate) fn decode_cursor(data: &[u8]) -> Result<(String, u64), Malformed> {
    let mut r = Reader { buf: data, pos: 0 };
    let n = r.u16()? as usize;
    let name = r.str(n, "cursor name")?;
    let position = r.u64()?;
    r.finish("cursor")?;
    Ok((name, position))
}

pub(crate) fn encode_dedup(k: Option<&DedupKey>) -> Vec<u8> {
    let Some(k) = k else { return Vec::new() };
    let mut out = Vec::with_capacity(1 + 4 + k.producer.len() + 8);
    out.push(DEDUP_VERSION);
    out.extend_from_slice(&(k.producer.len() as u32).to_le_bytes());
    out.extend_from_slice(k.producer.as_bytes());
    out.extend_from_slice(&k.sequence.to_le_bytes());
    out
}

pub(crate) fn decode_dedup(ctx: &[u8]) -> Result<Option<DedupKey>, Malformed> {
    if ctx.is_empty() {
        return Ok(None);
    }
    let mut r = Reader { buf: ctx, pos: 0 };
    let version = r.u8()?;
    if version != DEDUP_VERSION {
        return Err(Malformed::UnknownVersion {
            what: "dedup context",
            version,
        });
    }
    let n = r.u32()? as usize;
    let producer = r.str(n, "producer id")?;
    let sequence = r.u64()?;
    Ok(Some(DedupKey { producer, sequence }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entry_round_trips(term in any::<u64>(), ty in 0u8..3, ctx in proptest::collection::vec(any::<u8>(), 0..64), data in proptest::collection::vec(any::<u8>(), 0..512), index in 1u64..u64::MAX) {
            let mut e = Entry { term, index, ..Default::default() };
            e.set_entry_type(match ty { 0 => EntryType::EntryNormal, 1 => EntryType::EntryConfChange, _ => EntryType::EntryConfChangeV2 });
            e.context = ctx.into();
            e.data = data.into();
            let mut buf = Vec::new();
            encode_entry(&e, &mut buf);
            let back = to_entry(index, &buf).unwrap();
            prop_assert_eq!(back, e);
        }

        #[test]
        fn entry_decoder_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_entry(&buf);
        }

        #[test]
        fn meta_round_trips(term in any::<u64>(), vote in any::<u64>(), commit in any::<u64>(), ci in any::<u64>(), ct in any::<u64>(), voters in proptest::collection::vec(any::<u64>(), 0..5), learners in proptest::collection::vec(any::<u64>(), 0..3)) {
            let mut m = Meta { compacted_index: ci, compacted_term: ct, ..Default::default() };
            m.hard_state.term = term;
            m.hard_state.vote = vote;
            m.hard_state.commit = commit;
            m.conf_state.voters = voters;
            m.conf_state.learners = learners;
            prop_assert_eq!(decode_meta(&encode_meta(&m)).unwrap(), m);
        }

        #[test]
        fn meta_decoder_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_meta(&buf);
        }

        #[test]
        fn dedup_round_trips(producer in ".{0,40}", sequence in any::<u64>()) {
            let k = DedupKey { producer, sequence };
            prop_assert_eq!(decode_dedup(&encode_dedup(Some(&k))).unwrap(), Some(k));
        }
    }

    proptest! {
        #[test]
        fn cursor_round_trips(name in ".{0,40}", position in any::<u64>()) {
            prop_assert_eq!(decode_cursor(&encode_cursor(&name, position)).unwrap(), (name, position));
        }

        #[test]
        fn cursor_decoder_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_cursor(&buf);
        }
    }

    #[test]
    fn cursor_context_is_not_a_dedup_version() {
        assert!(is_cursor(&[CURSOR_CONTEXT]));
        assert!(!is_cursor(&encode_dedup(Some(&DedupKey {
            producer: "p".into(),
            sequence: 1
        }))));
        assert!(!is_cursor(&[]));
    }

    #[test]
    fn empty_context_means_no_dedup_key() {
        assert_eq!(decode_dedup(&[]).unwrap(), None);
        assert!(encode_dedup(None).is_empty());
    }
}
