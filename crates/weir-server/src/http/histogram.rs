//! `GET /api/v1/histogram`: how many records match a query in each bucket of a time
//! range, broken down by level: the search API's `q`, `start`, `end` and `level`, plus
//! `interval` (a duration: `30s`, `5m`; chosen from the range when absent, about 60
//! buckets of a round width). Without `end` the range ends now.
//!
//! When every shard is live on this node, the counts come from one pass per shard over
//! the query's matches in the index (the timestamp column and the level terms, no stored
//! record read). Otherwise each (bucket, level) is one count-only search through the
//! [`crate::search::Searcher`] (every shard, here or on a peer). Either way the counts are
//! exactly what a search of that bucket and level would report as `total`. At most
//! `search.histogram_buckets_max` buckets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use weir_index::{SearchRequest, Sort};
use weir_proto::api::search::{Bucket, HistogramResponse};
use weir_proto::{ApiError, Level};

use super::api::{parse_search, rfc3339};
use super::HttpError;
use crate::auth::Caller;
use crate::search::RemoteSearch;
use crate::state::NodeState;

const MS: i64 = 1_000_000;
/// Round bucket widths, in milliseconds; the first that gives at most about 60 buckets.
const ROUND_MS: [i64; 17] = [
    1,
    10,
    100,
    1_000,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    600_000,
    1_800_000,
    3_600_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
];
/// Counts in flight at once.
const CONCURRENT_COUNTS: usize = 8;

/// The bucket width for a range: `interval` when given, else the first round width that
/// gives at most 60 buckets (a week past that).
fn interval_ns(
    interval: Option<&String>,
    span_ns: i64,
    notices: &mut Vec<String>,
) -> Result<i64, ApiError> {
    if let Some(s) = interval {
        return weir_logql::units::parse_range_duration(s)
            .filter(|ns| *ns >= MS)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "interval must be a duration of at least 1ms (30s, 5m, 1h), not {s:?}"
                ))
            });
    }
    let ms = ROUND_MS
        .iter()
        .copied()
        .find(|ms| span_ns / (ms * MS) <= 60)
        .unwrap_or(ROUND_MS[ROUND_MS.len() - 1]);
    notices.push(format!(
        "no interval given: buckets of {ms} ms; pass interval (30s, 5m, 1h) to choose"
    ));
    Ok(ms * MS)
}

pub(super) async fn histogram(
    State(st): State<Arc<NodeState>>,
    caller: Caller,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Json<HistogramResponse>, HttpError> {
    let started = Instant::now();
    let interval = params.remove("interval");
    for refused in ["limit", "sort", "cursor"] {
        if params.contains_key(refused) {
            return Err(ApiError::invalid(format!(
                "{refused} is a search parameter; a histogram takes q, start, end, level and interval"
            ))
            .into());
        }
    }
    // The search API's default end reaches into the accepted future; a histogram's ends
    // now, so that it does not draw minutes that have not happened.
    params
        .entry("end".to_owned())
        .or_insert_with(|| crate::append::now_ns().to_string());
    let (req, mut notices) = parse_search(&params, caller.tenant, &st.config)?;
    st.limiter
        .check_range(&req.tenant, req.start_ns, req.end_ns, u64::MAX)?;
    let _slot = st.limiter.query_slot(&req.tenant)?;
    let span = req.end_ns - req.start_ns;
    let step = interval_ns(interval.as_ref(), span, &mut notices)?;
    // Buckets start on multiples of the width, so that two histograms line up.
    let first = req.start_ns.div_euclid(step) * step;
    let n = usize::try_from((req.end_ns - first + step - 1) / step).unwrap_or(usize::MAX);
    let max = st.config.search.histogram_buckets_max;
    if n > max {
        return Err(ApiError::invalid(format!(
            "{n} buckets of {} ms over the range, limit {max} (search.histogram_buckets_max); \
             pass a wider interval or a shorter range",
            step / MS
        ))
        .into());
    }
    let levels: Vec<Level> = if req.levels.is_empty() {
        Level::ALL.to_vec()
    } else {
        req.levels.clone()
    };
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|b| {
            let start_ns = first + b as i64 * step;
            Bucket {
                start: rfc3339(start_ns),
                start_ns,
                count: 0,
                levels: BTreeMap::new(),
            }
        })
        .collect();
    let mut missing = Vec::new();
    if let Some(counted) = count_here(&st, &req, &levels, first, step, n).await {
        for (level, counts) in counted? {
            for (b, c) in counts.into_iter().enumerate().filter(|(_, c)| *c > 0) {
                buckets[b].count += c;
                *buckets[b].levels.entry(level).or_default() += c;
            }
        }
    } else {
        count_bucket_by_bucket(&st, &req, &params, &levels, (first, step, n), &mut buckets)
            .await
            .map_err(HttpError::from)?
            .into_iter()
            .for_each(|s| missing.push(s));
    }
    missing.sort_unstable();
    missing.dedup();
    Ok(Json(HistogramResponse {
        start: rfc3339(req.start_ns),
        end: rfc3339(req.end_ns),
        interval_ms: (step / MS) as u64,
        total: buckets.iter().map(|b| b.count).sum(),
        buckets,
        took_ms: started.elapsed().as_millis() as u64,
        notices,
        partial: !missing.is_empty(),
        missing_shards: missing,
    }))
}

/// The counts per level and bucket in one pass over each shard's index on this node
/// ([`crate::search::Searcher::count_local`]); `None` when a shard is not live here.
async fn count_here(
    st: &NodeState,
    req: &SearchRequest,
    levels: &[Level],
    first: i64,
    step: i64,
    n: usize,
) -> Option<Result<Vec<(Level, Vec<u64>)>, ApiError>> {
    let wanted: Vec<&'static str> = levels.iter().map(|l| l.as_str()).collect();
    let count = weir_index::CountRequest {
        tenant: req.tenant.clone(),
        query: req.query.clone(),
        start_ns: req.start_ns,
        end_ns: req.end_ns,
        filters: vec![weir_index::LabelFilter {
            label: weir_index::LabelSource::label("level"),
            accepts: Arc::new(move |v: &str| wanted.contains(&v)),
        }],
        group_by: vec![weir_index::LabelSource::label("level")],
        origin_ns: first,
        width_ns: step,
        buckets: n,
        cells_max: n.saturating_mul(Level::ALL.len() + 1),
    };
    let groups = match st.searcher.count_local(count).await? {
        Ok(g) => g,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(groups
        .into_iter()
        .filter_map(|g| {
            let level = g
                .values
                .first()?
                .as_deref()
                .and_then(Level::from_canonical)?;
            Some((level, g.counts))
        })
        .collect()))
}

/// The counts as a count-only search per (bucket, level), through the searcher (every
/// shard, here or on a peer); returns the shards nobody answered for.
async fn count_bucket_by_bucket(
    st: &NodeState,
    req: &SearchRequest,
    params: &HashMap<String, String>,
    levels: &[Level],
    (first, step, n): (i64, i64, usize),
    buckets: &mut [Bucket],
) -> Result<Vec<u32>, ApiError> {
    let query_text = params.get("q").cloned().unwrap_or_default();
    let cells: Vec<(usize, Level)> = (0..n)
        .flat_map(|b| levels.iter().map(move |l| (b, *l)))
        .collect();
    let counts = stream::iter(cells)
        .map(|(b, level)| {
            let lo = (first + b as i64 * step).max(req.start_ns);
            let hi = (first + (b as i64 + 1) * step).min(req.end_ns);
            let search = RemoteSearch {
                request: SearchRequest {
                    query: req.query.clone(),
                    tenant: req.tenant.clone(),
                    start_ns: lo,
                    end_ns: hi,
                    levels: vec![level],
                    limit: 0,
                    sort: Sort::TimeDesc,
                    after: None,
                    prefilter: false,
                },
                query: query_text.clone(),
            };
            let searcher = st.searcher.clone();
            async move { (b, level, searcher.search(search).await) }
        })
        .buffer_unordered(CONCURRENT_COUNTS)
        .collect::<Vec<_>>()
        .await;
    let mut missing = Vec::new();
    for (b, level, page) in counts {
        let page = page?;
        missing.extend(page.missing_shards);
        if page.total > 0 {
            buckets[b].count += page.total;
            buckets[b].levels.insert(level, page.total);
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_width_gives_at_most_sixty_buckets() {
        let mut notices = Vec::new();
        let hour = 3_600_000 * MS;
        assert_eq!(interval_ns(None, hour, &mut notices).unwrap(), 60_000 * MS);
        assert_eq!(
            interval_ns(None, 24 * hour, &mut notices).unwrap(),
            1_800_000 * MS
        );
        assert_eq!(interval_ns(None, 10 * MS, &mut notices).unwrap(), MS);
        assert_eq!(
            interval_ns(Some(&"5m".to_owned()), hour, &mut notices).unwrap(),
            300_000 * MS
        );
        assert!(interval_ns(Some(&"0s".to_owned()), hour, &mut notices).is_err());
    }
}
