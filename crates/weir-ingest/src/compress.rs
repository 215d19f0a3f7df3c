//! Bounded decompression of request bodies: gzip (`Content-Encoding: gzip`, any HTTP
//! ingest path) and snappy block format (Loki's protobuf push).
//!
//! Both stop at `max_bytes` of output, the server's `limits.batch_bytes_max`: a body that
//! inflates past it is refused with [`Error::Decompressed`] without being inflated whole,
//! so a few kilobytes of "compression bomb" cost at most the limit in memory and time.

use std::io::Read;

use crate::{Error, Result};

/// Output is inflated in pieces of this size, so that the limit is checked often.
const CHUNK_BYTES: usize = 64 * 1024;

/// The first bytes of a snappy *framed* stream (a stream identifier chunk): a common
/// mistake for a client that should send the block format, worth naming in the error.
const SNAPPY_FRAMED_MAGIC: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// Inflates a gzip body (RFC 1952; several concatenated members are read as one stream,
/// as `gzip -d` does).
///
/// Inflation is incremental and stops as soon as the output would pass `max_bytes`. An
/// empty body inflates to an empty body (a client that compresses nothing may send no
/// bytes at all).
///
/// # Errors
///
/// [`Error::Decompressed`] when the output would be longer than `max_bytes`;
/// [`Error::Malformed`] (`gzip`) when the body is not gzip, is truncated or fails its
/// checksum.
///
/// ```
/// use std::io::Write;
/// let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
/// gz.write_all(b"hello").unwrap();
/// let body = gz.finish().unwrap();
/// assert_eq!(weir_ingest::gunzip(&body, 1024).unwrap(), b"hello");
/// assert!(weir_ingest::gunzip(&body, 4).is_err());
/// ```
pub fn gunzip(body: &[u8], max_bytes: usize) -> Result<Vec<u8>> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    // Compressed text is rarely more than 10x smaller; the hint only saves reallocations.
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max_bytes));
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let n = decoder.read(&mut chunk).map_err(|e| Error::Malformed {
            format: "gzip",
            reason: format!(
                "{e} after {} bytes of output; send a whole gzip stream (RFC 1952)",
                out.len()
            ),
        })?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max_bytes {
            return Err(Error::Decompressed {
                encoding: "gzip",
                limit: max_bytes,
            });
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Decompresses a snappy body in **block** format (no stream identifier, no chunks), as
/// Loki's push API takes it.
///
/// The declared length (the block's leading varint) is read first and a body declaring
/// more than `max_bytes` is refused before anything is allocated. An empty body is empty.
///
/// # Errors
///
/// [`Error::Decompressed`] when the declared length is over `max_bytes`;
/// [`Error::Malformed`] (`snappy`) when the body is not a valid block (the reason says so
/// when it looks like the framed format instead).
///
/// ```
/// let body = snap::raw::Encoder::new().compress_vec(b"hello").unwrap();
/// assert_eq!(weir_ingest::unsnappy(&body, 1024).unwrap(), b"hello");
/// assert!(weir_ingest::unsnappy(&body, 4).is_err());
/// ```
pub fn unsnappy(body: &[u8], max_bytes: usize) -> Result<Vec<u8>> {
    let malformed = |e: snap::Error| Error::Malformed {
        format: "snappy",
        reason: if body.starts_with(SNAPPY_FRAMED_MAGIC) {
            "the body is in the snappy framed format; send the block format \
             (snappy.Encode in Go, snap::raw in Rust)"
                .to_owned()
        } else {
            format!("{e}; send the snappy block format")
        },
    };
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let declared = match snap::raw::decompress_len(body) {
        // A declared length past snappy's own 4 GiB maximum is past any limit too.
        Err(snap::Error::TooBig { .. }) => usize::MAX,
        other => other.map_err(malformed)?,
    };
    if declared > max_bytes {
        return Err(Error::Decompressed {
            encoding: "snappy",
            limit: max_bytes,
        });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn gzip_round_trips_up_to_the_limit_inclusive() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let body = gzip(&data);
        assert_eq!(gunzip(&body, data.len()).unwrap(), data);
        assert_eq!(
            gunzip(&body, data.len() - 1),
            Err(Error::Decompressed {
                encoding: "gzip",
                limit: data.len() - 1
            })
        );
    }

    #[test]
    fn concatenated_gzip_members_are_one_body() {
        let mut body = gzip(b"first line\n");
        body.extend(gzip(b"second line\n"));
        assert_eq!(gunzip(&body, 1024).unwrap(), b"first line\nsecond line\n");
    }

    #[test]
    fn a_gzip_bomb_is_refused_with_the_limit_and_its_key() {
        // 32 MiB of zeros gzip to ~32 KiB.
        let body = gzip(&vec![0u8; 32 * 1024 * 1024]);
        assert!(body.len() < 64 * 1024);
        let e = gunzip(&body, 1024 * 1024).unwrap_err();
        assert_eq!(
            e.to_string(),
            "gzip body inflates past 1048576 bytes (limits.batch_bytes_max); send smaller requests"
        );
    }

    #[test]
    fn broken_gzip_is_malformed() {
        let body = gzip(b"some text that is long enough to matter");
        for bad in [&b"not gzip at all"[..], &body[..body.len() - 6]] {
            let e = gunzip(bad, 1024).unwrap_err();
            assert!(
                matches!(e, Error::Malformed { format: "gzip", .. }),
                "{e:?}"
            );
        }
        assert_eq!(gunzip(b"", 10).unwrap(), b"");
    }

    #[test]
    fn snappy_block_round_trips_and_checks_the_declared_length_first() {
        let data = b"a line, a line, a line, a line".repeat(100);
        let body = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(unsnappy(&body, data.len()).unwrap(), data);
        assert_eq!(
            unsnappy(&body, data.len() - 1),
            Err(Error::Decompressed {
                encoding: "snappy",
                limit: data.len() - 1
            })
        );
        // Blocks declaring 3.75 GiB and 4 GiB (past snappy's own maximum) in five bytes of
        // varint: refused before any allocation.
        for top in [0x0f, 0x10] {
            let bomb = [0x80, 0x80, 0x80, 0x80, top, 0x00];
            let e = unsnappy(&bomb, 16 * 1024 * 1024).unwrap_err();
            assert!(
                e.to_string()
                    .contains("snappy body inflates past 16777216 bytes"),
                "{e}"
            );
        }
        assert_eq!(unsnappy(b"", 0).unwrap(), b"");
    }

    #[test]
    fn snappy_framed_format_is_named_in_the_error() {
        let mut framed = snap::write::FrameEncoder::new(Vec::new());
        framed.write_all(b"hello").unwrap();
        let body = framed.into_inner().unwrap();
        let e = unsnappy(&body, 1024).unwrap_err().to_string();
        assert!(e.contains("framed format"), "{e}");
        let e = unsnappy(&[0xff], 1024).unwrap_err();
        assert!(matches!(
            e,
            Error::Malformed {
                format: "snappy",
                ..
            }
        ));
    }
}
