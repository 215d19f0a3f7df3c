//! The dead-letter log of one sink: records the backend refused for good, with its
//! reason, kept until they are replayed (`weir dlq replay`).
//!
//! Format: `<data_dir>/dlq/<sink>.jsonl`, one JSON object per line
//! (`seq, at_ns, shard, index, offset, tenant, reason, record`), appended and fdatasynced
//! before the sink's cursor moves past the records (so a record is either delivered, in
//! the dead-letter log, or still ahead of the cursor: never nowhere). A torn last line (a
//! crash while appending) is cut off at open; a bad line before the last is an error
//! naming the file and line. Removing replayed records rewrites the file atomically,
//! starting with a `{"next_seq":N}` line so that numbers are never handed out twice. A
//! record already held (same shard, index, offset: it was sent again after a restart or
//! a leader change and refused again) is not added a second time.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};
use weir_proto::api::dlq as api;
use weir_proto::v1::StoredRecord;

use crate::item::{record_from_json, record_to_api, Item};
use crate::{Error, Result};

/// One dead-lettered record.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Sequence number in this log, from 1.
    pub seq: u64,
    /// When it was dead-lettered (Unix ns).
    pub at_ns: i64,
    /// Why the backend refused it.
    pub reason: String,
    /// The record and its log position.
    pub item: Item,
}

impl DeadLetter {
    /// As the API shows it, which is also the line format of the log.
    pub fn to_api(&self) -> api::DeadLetter {
        api::DeadLetter {
            at_ns: self.at_ns,
            index: self.item.index,
            offset: self.item.offset,
            reason: self.reason.clone(),
            record: record_to_api(&self.item.record),
            seq: self.seq,
            shard: self.item.shard,
            tenant: self.item.tenant.clone(),
        }
    }

    /// Reads a line of the log by hand rather than through [`api::DeadLetter`]: an error
    /// names the field that is missing or of the wrong type down to a record's
    /// `labels.<key>`, and a missing `at_ns` or `reason` reads as 0 or empty.
    fn from_json(v: &Value) -> std::result::Result<DeadLetter, String> {
        let u = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("field {k:?} missing or not an unsigned integer"))
        };
        let record: StoredRecord =
            record_from_json(v.get("record").ok_or("field \"record\" missing")?)?;
        Ok(DeadLetter {
            seq: u("seq")?,
            at_ns: v.get("at_ns").and_then(Value::as_i64).unwrap_or(0),
            reason: v
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            item: Item {
                shard: u("shard")? as u32,
                index: u("index")?,
                offset: u("offset")? as u32,
                tenant: v
                    .get("tenant")
                    .and_then(Value::as_str)
                    .ok_or("field \"tenant\" missing")?
                    .to_owned(),
                record,
            },
        })
    }
}

struct Inner {
    file: File,
    letters: Vec<DeadLetter>,
    /// (shard, index, offset) of every letter held.
    keys: std::collections::HashSet<(u32, u64, u32)>,
    bytes: u64,
    next_seq: u64,
}

/// See the module documentation.
pub struct DeadLetters {
    path: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

impl DeadLetters {
    /// Opens (creating) the log of sink `name` under `dir`.
    ///
    /// # Errors
    /// I/O errors; [`Error::Corrupt`] for a bad line that is not the last.
    pub fn open(dir: &Path, name: &str, max_bytes: u64) -> Result<DeadLetters> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("{name}.jsonl"));
        let existed = path.exists();
        let text = if existed {
            std::fs::read(&path).map_err(|e| Error::io(&path, e))?
        } else {
            Vec::new()
        };
        let mut letters = Vec::new();
        let mut next_seq = 1;
        let mut good_len = 0usize;
        let mut pos = 0usize;
        let mut line_no = 0;
        while pos < text.len() {
            line_no += 1;
            let end = text[pos..].iter().position(|&b| b == b'\n');
            let Some(end) = end.map(|e| pos + e) else {
                tracing::warn!(path = %path.display(), line = line_no, "torn last line of the dead-letter log cut off");
                break;
            };
            let parsed = serde_json::from_slice::<Value>(&text[pos..end])
                .map_err(|e| e.to_string())
                .and_then(|v| match v.get("next_seq").and_then(Value::as_u64) {
                    Some(n) if v.as_object().is_some_and(|o| o.len() == 1) => Ok(Err(n)),
                    _ => DeadLetter::from_json(&v).map(Ok),
                });
            match parsed {
                Ok(Ok(l)) => {
                    next_seq = next_seq.max(l.seq + 1);
                    letters.push(l);
                }
                Ok(Err(n)) => next_seq = next_seq.max(n),
                Err(reason) if end + 1 >= text.len() => {
                    tracing::warn!(path = %path.display(), line = line_no, %reason, "torn last line of the dead-letter log cut off");
                    break;
                }
                Err(reason) => {
                    return Err(Error::Corrupt {
                        path: path.clone(),
                        line: line_no,
                        reason,
                    })
                }
            }
            pos = end + 1;
            good_len = pos;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if good_len < text.len() {
            file.set_len(good_len as u64)
                .map_err(|e| Error::io(&path, e))?;
            file.sync_data().map_err(|e| Error::io(&path, e))?;
        }
        if !existed {
            weir_wal::durable::fsync_dir(dir).map_err(|e| Error::io(dir, e))?;
        }
        let keys = letters.iter().map(|l| key(&l.item)).collect();
        Ok(DeadLetters {
            path,
            max_bytes,
            inner: Mutex::new(Inner {
                file,
                letters,
                keys,
                bytes: good_len as u64,
                next_seq,
            }),
        })
    }

    /// Appends `rejected` durably (written and fdatasynced before returning).
    ///
    /// # Errors
    /// [`Error::DlqFull`] when it would pass `dlq_bytes_max` (nothing is written); I/O.
    pub fn append(&self, rejected: Vec<(Item, String)>, now_ns: i64) -> Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        let mut added = Vec::with_capacity(rejected.len());
        let mut seq = g.next_seq;
        for (item, reason) in rejected {
            if g.keys.contains(&key(&item))
                || added
                    .iter()
                    .any(|l: &DeadLetter| key(&l.item) == key(&item))
            {
                continue;
            }
            let l = DeadLetter {
                seq,
                at_ns: now_ns,
                reason,
                item,
            };
            seq += 1;
            let _ = serde_json::to_writer(&mut buf, &l.to_api());
            buf.push(b'\n');
            added.push(l);
        }
        if g.bytes + buf.len() as u64 > self.max_bytes {
            return Err(Error::DlqFull {
                path: self.path.clone(),
                max_bytes: self.max_bytes,
            });
        }
        let r = g.file.write_all(&buf).and_then(|_| g.file.sync_data());
        if let Err(e) = r {
            // A partial line would be cut at the next open; drop it now so later appends
            // do not land after it.
            let bytes = g.bytes;
            let _ = g.file.set_len(bytes);
            return Err(Error::io(&self.path, e));
        }
        g.bytes += buf.len() as u64;
        g.next_seq = seq;
        g.keys.extend(added.iter().map(|l| key(&l.item)));
        g.letters.extend(added);
        Ok(())
    }

    /// Every dead letter, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .letters
            .clone()
    }

    /// Number of dead letters held and their bytes.
    pub fn size(&self) -> (usize, u64) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.letters.len(), g.bytes)
    }

    /// Records what a replay did, in one rewrite of the file: the letters numbered in
    /// `delivered` are removed, those in `again` keep their place with the new reason.
    ///
    /// # Errors
    /// I/O; the log is unchanged then.
    pub fn settle(&self, delivered: &[u64], again: &[(u64, String)]) -> Result<()> {
        if delivered.is_empty() && again.is_empty() {
            return Ok(());
        }
        let delivered: std::collections::HashSet<u64> = delivered.iter().copied().collect();
        let again: std::collections::HashMap<u64, &String> =
            again.iter().map(|(s, r)| (*s, r)).collect();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let keep: Vec<DeadLetter> = g
            .letters
            .iter()
            .filter(|l| !delivered.contains(&l.seq))
            .map(|l| {
                let mut l = l.clone();
                if let Some(r) = again.get(&l.seq) {
                    l.reason.clone_from(r);
                }
                l
            })
            .collect();
        self.rewrite(&mut g, keep)
    }

    fn rewrite(&self, g: &mut Inner, letters: Vec<DeadLetter>) -> Result<()> {
        let mut buf = Vec::new();
        let _ = serde_json::to_writer(&mut buf, &json!({ "next_seq": g.next_seq }));
        buf.push(b'\n');
        for l in &letters {
            let _ = serde_json::to_writer(&mut buf, &l.to_api());
            buf.push(b'\n');
        }
        weir_wal::durable::atomic_write(&self.path, &buf).map_err(|e| Error::io(&self.path, e))?;
        g.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        g.bytes = buf.len() as u64;
        g.keys = letters.iter().map(|l| key(&l.item)).collect();
        g.letters = letters;
        Ok(())
    }
}

fn key(it: &Item) -> (u32, u64, u32) {
    (it.shard, it.index, it.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: u64) -> Item {
        Item {
            shard: 1,
            index: i,
            offset: 0,
            tenant: "t".into(),
            record: StoredRecord {
                body: format!("r{i}"),
                level: 3,
                ..Default::default()
            },
        }
    }

    #[test]
    fn letters_survive_reopen_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::open(dir.path(), "es", 1 << 20).unwrap();
        d.append(
            vec![(item(1), "400 bad".into()), (item(2), "400 worse".into())],
            5,
        )
        .unwrap();
        drop(d);
        let d = DeadLetters::open(dir.path(), "es", 1 << 20).unwrap();
        let l = d.list();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].seq, l[1].reason.as_str()), (1, "400 worse"));
        d.settle(&[1], &[]).unwrap();
        d.append(vec![(item(3), "x".into())], 6).unwrap();
        drop(d);
        let d = DeadLetters::open(dir.path(), "es", 1 << 20).unwrap();
        let seqs: Vec<u64> = d.list().iter().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![2, 3], "sequence numbers are never reused");
        assert_eq!(d.list()[1].item, item(3));
        // Emptied by a replay and reopened: numbering goes on.
        d.settle(&[2, 3], &[]).unwrap();
        drop(d);
        let d = DeadLetters::open(dir.path(), "es", 1 << 20).unwrap();
        assert!(d.list().is_empty());
        d.append(vec![(item(4), "x".into())], 7).unwrap();
        assert_eq!(d.list()[0].seq, 4, "not 1 again");
    }

    #[test]
    fn a_record_refused_again_after_a_resend_is_held_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::open(dir.path(), "es", 1 << 20).unwrap();
        d.append(vec![(item(1), "r".into())], 1).unwrap();
        d.append(vec![(item(1), "r".into()), (item(2), "r".into())], 2)
            .unwrap();
        let idx: Vec<u64> = d.list().iter().map(|l| l.item.index).collect();
        assert_eq!(idx, vec![1, 2]);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_a_bad_middle_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::open(dir.path(), "l", 1 << 20).unwrap();
        d.append(vec![(item(1), "r".into())], 1).unwrap();
        drop(d);
        let path = dir.path().join("l.jsonl");
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"seq\":2,\"at_");
        std::fs::write(&path, &text).unwrap();
        let d = DeadLetters::open(dir.path(), "l", 1 << 20).unwrap();
        assert_eq!(d.list().len(), 1);
        d.append(vec![(item(2), "r".into())], 1).unwrap();
        drop(d);
        let mut text = b"garbage\n".to_vec();
        text.extend(std::fs::read(&path).unwrap());
        std::fs::write(&path, &text).unwrap();
        match DeadLetters::open(dir.path(), "l", 1 << 20) {
            Err(Error::Corrupt { line, .. }) => assert_eq!(line, 1),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a bad first line must be an error"),
        }
    }

    #[test]
    fn a_full_log_refuses_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::open(dir.path(), "es", 300).unwrap();
        assert!(matches!(
            d.append(vec![(item(1), "r".repeat(400))], 1),
            Err(Error::DlqFull { .. })
        ));
        assert_eq!(d.size(), (0, 0));
    }
}
