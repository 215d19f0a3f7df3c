//! The gRPC codec of every Weir service: prost, except that a request that is not valid
//! protobuf is `INVALID_ARGUMENT` (the client sent something wrong), not tonic's default
//! `INTERNAL` (which says Weir is broken and invites a retry of the same bytes), and that an
//! `AppendRequest` is measured before it is decoded: its records are counted on the wire
//! and one holding more than `limits.batch_records_max` (see [`set_append_records_max`]),
//! or whose decoded form would take more than [`DECODED_BYTES_PER_WIRE_BYTE`] times its
//! size, is refused without being decoded. (A 16 MiB request of empty records decodes
//! into ~8 M records of ~300 bytes each: 2.5 GB from 16 MiB.)

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::bytes::Buf;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

use crate::v1::{AppendRequest, Record};

/// Records an `AppendRequest` may hold, checked on the wire before decoding. The server
/// sets it from `limits.batch_records_max` when it starts.
static APPEND_RECORDS_MAX: AtomicUsize = AtomicUsize::new(100_000);

/// How much memory a decoded `AppendRequest` may take per byte of its encoding (plus
/// [`DECODED_BYTES_SLACK`]): bounds what a request of tiny elements can cost.
pub const DECODED_BYTES_PER_WIRE_BYTE: usize = 32;

/// Memory a decoded `AppendRequest` may take beyond [`DECODED_BYTES_PER_WIRE_BYTE`] times
/// its size (100 000 small records fit).
pub const DECODED_BYTES_SLACK: usize = 64 << 20;

/// Sets the records an `AppendRequest` may hold (`limits.batch_records_max`).
pub fn set_append_records_max(n: usize) {
    APPEND_RECORDS_MAX.store(n, Ordering::Relaxed);
}

/// Counts the records of an encoded `AppendRequest` and the entries of their label and
/// attribute maps, and estimates the memory its decoded form takes, without allocating.
///
/// # Errors
/// A sentence naming the limit the request breaks (`limits.batch_records_max`, or the
/// decoded-size bound), or what is malformed.
pub fn check_append_size(wire: &[u8]) -> Result<(), String> {
    let (records, entries) = count_append(wire)?;
    let max = APPEND_RECORDS_MAX.load(Ordering::Relaxed);
    if records > max {
        return Err(format!(
            "request has {records} records, limit {max} (limits.batch_records_max); send smaller batches"
        ));
    }
    let entry_bytes = 2 * std::mem::size_of::<String>() + 16;
    let estimate = wire.len() + records * std::mem::size_of::<Record>() + entries * entry_bytes;
    let allowed = wire.len() * DECODED_BYTES_PER_WIRE_BYTE + DECODED_BYTES_SLACK;
    if estimate > allowed {
        return Err(format!(
            "request of {} bytes holds {records} records with {entries} labels and attributes, \
             which would take ~{estimate} bytes decoded (at most {DECODED_BYTES_PER_WIRE_BYTE} times \
             the request's size plus {DECODED_BYTES_SLACK}); send fewer, fuller records",
            wire.len()
        ));
    }
    Ok(())
}

/// (records, label and attribute map entries) of an encoded `AppendRequest`.
fn count_append(mut b: &[u8]) -> Result<(usize, usize), String> {
    let (mut records, mut entries) = (0usize, 0usize);
    while !b.is_empty() {
        let (field, value) = next_field(&mut b)?;
        if let (4, Some(mut record)) = (field, value) {
            records += 1;
            while !record.is_empty() {
                if let (8 | 9, Some(_)) = next_field(&mut record)? {
                    entries += 1;
                }
            }
        }
    }
    Ok((records, entries))
}

/// Reads one field: its number and, for a length-delimited one, its bytes.
fn next_field<'a>(b: &mut &'a [u8]) -> Result<(u64, Option<&'a [u8]>), String> {
    let tag = varint(b)?;
    let field = tag >> 3;
    let skip = |b: &mut &'a [u8], n: usize| -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("malformed protobuf message: truncated field".to_owned());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    };
    match tag & 7 {
        0 => varint(b).map(|_| (field, None)),
        1 => skip(b, 8).map(|_| (field, None)),
        5 => skip(b, 4).map(|_| (field, None)),
        2 => {
            let len = usize::try_from(varint(b)?).map_err(|_| "malformed length".to_owned())?;
            skip(b, len).map(|v| (field, Some(v)))
        }
        w => Err(format!("malformed protobuf message: wire type {w}")),
    }
}

fn varint(b: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some((&byte, rest)) = b.split_first() else {
            break;
        };
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err("malformed protobuf message: bad varint".to_owned())
}

/// prost codec with malformed input mapped to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictProstCodec<T, U> {
    fn default() -> Self {
        StrictProstCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for StrictProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictProstDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, answering `INVALID_ARGUMENT` for bytes that are not a `U`.
#[derive(Debug, Clone)]
pub struct StrictProstDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default + 'static> Decoder for StrictProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let malformed = |e: prost::DecodeError| {
            Status::invalid_argument(format!("malformed protobuf message: {e}"))
        };
        if TypeId::of::<U>() == TypeId::of::<AppendRequest>() {
            let bytes = buf.copy_to_bytes(buf.remaining());
            check_append_size(&bytes).map_err(Status::invalid_argument)?;
            return U::decode(bytes).map(Some).map_err(malformed);
        }
        U::decode(buf).map(Some).map_err(malformed)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(records: Vec<Record>) -> Vec<u8> {
        AppendRequest {
            records,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn records_and_entries_are_counted_as_prost_encodes_them() {
        let mut r = Record {
            body: b"payment declined".to_vec(),
            level: "error".into(),
            ..Default::default()
        };
        r.labels.insert("app".into(), "checkout".into());
        r.attributes.insert("order".into(), "8812".into());
        r.attributes.insert("user".into(), "42".into());
        let wire = request(vec![r.clone(), Record::default(), r]);
        assert_eq!(count_append(&wire), Ok((3, 6)));
        check_append_size(&wire).unwrap();
    }

    /// A 16 MiB request of empty records decoded into ~2.5 GB and could abort the node:
    /// it is refused from its wire form.
    #[test]
    fn a_request_of_millions_of_empty_records_is_refused_before_decoding() {
        let wire = request(vec![Record::default(); 1_000_000]);
        let e = check_append_size(&wire).unwrap_err();
        assert!(e.contains("limits.batch_records_max"), "{e}");
        // Within the record limit, empty records still cost more than they weigh.
        set_append_records_max(usize::MAX);
        let e = check_append_size(&wire).unwrap_err();
        set_append_records_max(100_000);
        assert!(e.contains("decoded"), "{e}");
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let wire = request(vec![Record {
            body: b"x".repeat(100),
            ..Default::default()
        }]);
        for cut in 0..wire.len() {
            let _ = check_append_size(&wire[..cut]);
        }
    }
}
