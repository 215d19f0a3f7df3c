//! Query evaluation over a [`Source`].
//!
//! Log queries read `[start, end)` once, in the query's direction, and stop after
//! `limit` entries. Metric queries read each range aggregation's entries once for the
//! whole span (`(start - range - offset, end - offset]`) and add every sample to the
//! steps whose window `(t - range, t]` holds it (Loki's `range_vector.go`: the lower
//! bound is exclusive; `offset` shifts the window back and the output stays at `t`).

use std::collections::{BTreeMap, HashMap};

use crate::ast::*;
use crate::error::{EngineError, Result};
use crate::pipeline::{CompiledUnwrap, Pipeline, ERROR_LABEL};
use crate::result::{QueryResult, Sample, Series, Stream, StreamEntry};
use crate::source::{hints, CountRequest, Direction, Source};
use crate::vector::{self, SeriesVec, Value};
use crate::{Entry, Labels};

/// Bounds on what one query may hold in memory; an error names the field exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most series a metric query's result may hold, and the most any one range
    /// aggregation may track (each tracked series costs `points × ~32` bytes). Loki's
    /// `max_query_series`. Log queries are bounded by [`QueryParams::limit`] instead.
    ///
    /// Where the grouping of the vector aggregations above a range aggregation is pushed
    /// down into it (see [`evaluate`]), the range aggregation tracks one series per
    /// *group*, and this limit bounds the groups: `sum by (level)
    /// (count_over_time({env="prod"}[1m]))` needs three, however many streams or
    /// `trace_id`s there are. Elsewhere it bounds the range aggregation's raw series
    /// (`count by (level) (...)` counts series, so it still needs them all).
    pub max_series: usize,
    /// The most steps a range query may have: `(end - start) / step + 1`.
    pub max_points_per_series: usize,
    /// The most samples `quantile_over_time` may buffer (it needs every value of a
    /// window, where the other functions keep running aggregates).
    pub max_samples_in_memory: usize,
}

impl Default for Limits {
    /// Loki's defaults where it has one: 500 series, 11 000 points per series.
    fn default() -> Self {
        Limits {
            max_series: 500,
            max_points_per_series: 11_000,
            max_samples_in_memory: 10_000_000,
        }
    }
}

/// The parameters of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParams {
    /// Start, nanoseconds: inclusive for log queries, the first step for metric ones.
    pub start_ns: i64,
    /// End, nanoseconds: exclusive for log queries, the last step (at most) for metric
    /// ones, the evaluation time for instant queries.
    pub end_ns: i64,
    /// Step between evaluations of a range metric query (> 0); also `[$__auto]`.
    pub step_ns: i64,
    /// The most entries a log query returns (> 0), across all streams.
    pub limit: usize,
    /// Log queries: which end of `[start, end)` the `limit` entries come from.
    pub direction: Direction,
    /// Evaluate a metric query once at `end_ns` (a [`QueryResult::Vector`] or
    /// [`QueryResult::Scalar`]) instead of at every step.
    pub instant: bool,
    /// Memory bounds.
    pub limits: Limits,
}

impl Default for QueryParams {
    /// An empty backward range query: `limit` 100 (Loki's default), default limits.
    fn default() -> Self {
        QueryParams {
            start_ns: 0,
            end_ns: 0,
            step_ns: 0,
            limit: 100,
            direction: Direction::Backward,
            instant: false,
            limits: Limits::default(),
        }
    }
}

/// The steps of a metric query: `start + k * step` for `k < n`.
#[derive(Debug, Clone, Copy)]
struct Steps {
    start: i64,
    step: i64,
    n: usize,
}

impl Steps {
    fn at(&self, k: usize) -> i64 {
        self.start + k as i64 * self.step
    }

    fn last(&self) -> i64 {
        self.at(self.n - 1)
    }
}

struct Ctx<'a> {
    params: &'a QueryParams,
    source: &'a dyn Source,
    steps: Steps,
    /// Push vector aggregations' grouping down into range aggregations where the
    /// result is the same ([`Pushdown`]); off only to test that it is.
    pushdown: bool,
}

/// Evaluates a parsed query.
///
/// # Grouping pushdown
///
/// As Loki does, a `sum`, `min` or `max` aggregation (or a chain of the same one, such as
/// `sum by (a) (sum by (a, b) (...))`) directly over a range aggregation whose value
/// per group is the same aggregate of the raw samples hands its grouping down: the range
/// aggregation accumulates the samples of each group together instead of each series,
/// so memory and [`Limits::max_series`] count groups. Pushed down: `sum` over
/// `count_over_time`, `rate` (with or without `unwrap`), `bytes_over_time`, `bytes_rate`
/// and `sum_over_time`; `min` over `min_over_time`; `max` over `max_over_time`.
/// Everything else (`count`, `avg`, `stddev`, `topk` ...; `max` over
/// `count_over_time`, ...) aggregates the range aggregation's series as they are; a
/// pushed-down aggregation nested in one of those (`topk(2, sum by (a) (rate(..)))`)
/// is still pushed down.
///
/// The result is that of aggregating series by series, with two float caveats: a
/// `rate`/`bytes_rate` is the group's total over the range's seconds rather than the
/// sum of each series' quotient (as Loki computes it), and the samples of a group are
/// summed in time order rather than series by series; either may change the last bit
/// of a non-integral value (and a `min`/`max` between `0` and `-0` may keep the other
/// zero). A series carrying `__error__` fails the query before its
/// labels are grouped away, as without pushdown.
///
/// # Errors
/// [`EngineError::Invalid`] for bad parameters, [`EngineError::Limit`] when a
/// [`Limits`] bound is exceeded, [`EngineError::Pipeline`] when a metric series carries
/// `__error__` (as Loki), and whatever the [`Source`] returns.
pub fn evaluate(expr: &Expr, params: &QueryParams, source: &dyn Source) -> Result<QueryResult> {
    evaluate_with(expr, params, source, true)
}

fn limit_err(what: &'static str, limit: usize, message: String) -> EngineError {
    EngineError::Limit {
        what,
        limit,
        message,
    }
}

fn check_entry(e: &Entry, selector: &[crate::Matcher], lo: i64, hi: i64) -> bool {
    e.ts_ns >= lo && e.ts_ns < hi && selector.iter().all(|m| m.matches_labels(&e.stream))
}

fn eval_log(log: &LogExpr, params: &QueryParams, source: &dyn Source) -> Result<QueryResult> {
    if params.limit == 0 {
        return Err(EngineError::Invalid("limit must be greater than 0".into()));
    }
    if params.end_ns < params.start_ns {
        return Err(EngineError::Invalid("end must not be before start".into()));
    }
    let pipeline = Pipeline::new(log)?;
    let forward = params.direction == Direction::Forward;
    let iter = source.select(
        &log.selector,
        &hints(log),
        params.start_ns,
        params.end_ns,
        params.direction,
    )?;
    let mut streams: BTreeMap<Labels, Stream> = BTreeMap::new();
    let (mut taken, mut prev_ts) = (0usize, None::<i64>);
    for item in iter {
        let e = item?;
        if !check_entry(&e, &log.selector, params.start_ns, params.end_ns) {
            continue;
        }
        if prev_ts.is_some_and(|p| if forward { e.ts_ns < p } else { e.ts_ns > p }) {
            return Err(EngineError::Source(format!(
                "entries out of {:?} order: {} after {}",
                params.direction,
                e.ts_ns,
                prev_ts.unwrap_or_default()
            )));
        }
        prev_ts = Some(e.ts_ns);
        let Some(p) = pipeline.process(&e) else {
            continue;
        };
        let key = p.labels();
        let stream = streams.entry(key.clone()).or_insert_with(|| Stream {
            labels: key,
            stream: p.stream.clone(),
            entries: Vec::new(),
        });
        stream.entries.push(StreamEntry {
            ts_ns: e.ts_ns,
            line: p.line,
            metadata: p.metadata,
            parsed: p.parsed,
        });
        taken += 1;
        if taken >= params.limit {
            break;
        }
    }
    Ok(QueryResult::Streams(streams.into_values().collect()))
}

fn steps(params: &QueryParams) -> Result<Steps> {
    if params.instant {
        return Ok(Steps {
            start: params.end_ns,
            step: 1,
            n: 1,
        });
    }
    if params.step_ns <= 0 {
        return Err(EngineError::Invalid(
            "a range query needs a positive step".into(),
        ));
    }
    if params.end_ns < params.start_ns {
        return Err(EngineError::Invalid("end must not be before start".into()));
    }
    let n = (params.end_ns as i128 - params.start_ns as i128) / params.step_ns as i128 + 1;
    let max = params.limits.max_points_per_series;
    if n > max as i128 {
        return Err(limit_err(
            "max_points_per_series",
            max,
            format!("the query would evaluate {n} steps; raise the step or shorten the range"),
        ));
    }
    Ok(Steps {
        start: params.start_ns,
        step: params.step_ns,
        n: n as usize,
    })
}

/// [`evaluate`], with grouping pushdown on or off (off only in tests).
pub(crate) fn evaluate_with(
    expr: &Expr,
    params: &QueryParams,
    source: &dyn Source,
    pushdown: bool,
) -> Result<QueryResult> {
    match expr {
        Expr::Log(log) => eval_log(log, params, source),
        Expr::Metric(m) => eval_metric(m, params, source, pushdown),
    }
}

fn eval_metric(
    m: &MetricExpr,
    params: &QueryParams,
    source: &dyn Source,
    pushdown: bool,
) -> Result<QueryResult> {
    let ctx = Ctx {
        params,
        source,
        steps: steps(params)?,
        pushdown,
    };
    let value = eval(m, &ctx)?;
    let steps = ctx.steps;
    if let Value::Vector(v) = &value {
        let max = params.limits.max_series;
        if v.len() > max {
            return Err(limit_err(
                "max_series",
                max,
                format!(
                    "the result has {} series; aggregate further or narrow the selector",
                    v.len()
                ),
            ));
        }
    }
    Ok(match (value, params.instant) {
        (Value::Scalar(s), true) => QueryResult::Scalar {
            ts_ns: steps.at(0),
            value: s[0],
        },
        (Value::Scalar(s), false) => QueryResult::Matrix(vec![Series {
            labels: Labels::new(),
            points: s
                .into_iter()
                .enumerate()
                .map(|(k, v)| (steps.at(k), v))
                .collect(),
        }]),
        (Value::Vector(v), true) => QueryResult::Vector(instant_vector(m, v, steps.at(0))),
        (Value::Vector(v), false) => {
            let mut series: Vec<Series> = v
                .into_iter()
                .map(|(labels, points)| Series {
                    labels,
                    points: points
                        .into_iter()
                        .enumerate()
                        .filter_map(|(k, p)| p.map(|v| (steps.at(k), v)))
                        .collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            QueryResult::Matrix(series)
        }
    })
}

/// Samples of an instant query, sorted by labels, or by value under an outermost
/// `sort`, `sort_desc`, `topk` or `bottomk`.
fn instant_vector(m: &MetricExpr, v: SeriesVec, ts_ns: i64) -> Vec<Sample> {
    let mut samples: Vec<Sample> = v
        .into_iter()
        .filter_map(|(labels, p)| {
            p[0].map(|value| Sample {
                labels,
                ts_ns,
                value,
            })
        })
        .collect();
    samples.sort_by(|a, b| a.labels.cmp(&b.labels));
    if let MetricExpr::Aggregate(agg) = m {
        match agg.op {
            VectorOp::Sort | VectorOp::Bottomk => {
                samples.sort_by(|a, b| a.value.total_cmp(&b.value))
            }
            VectorOp::SortDesc | VectorOp::Topk => {
                samples.sort_by(|a, b| b.value.total_cmp(&a.value))
            }
            _ => {}
        }
    }
    samples
}

fn eval(m: &MetricExpr, ctx: &Ctx<'_>) -> Result<Value> {
    let n = ctx.steps.n;
    Ok(match m {
        MetricExpr::Number(v) => Value::Scalar(vec![*v; n]),
        MetricExpr::VectorLiteral(v) => Value::Vector(vec![(Labels::new(), vec![Some(*v); n])]),
        MetricExpr::Range(ra) => Value::Vector(eval_range(ra, ctx, None)?),
        MetricExpr::Aggregate(agg) => match Pushdown::of(agg).filter(|_| ctx.pushdown) {
            Some(p) => Value::Vector(eval_range(p.range, ctx, Some(&p))?),
            None => Value::Vector(vector::aggregate(agg, eval_vector(&agg.inner, ctx)?, n)),
        },
        MetricExpr::Binary(b) => vector::binary(b, eval(&b.lhs, ctx)?, eval(&b.rhs, ctx)?, n)?,
        MetricExpr::LabelReplace(lr) => {
            Value::Vector(vector::label_replace(lr, eval_vector(&lr.inner, ctx)?)?)
        }
    })
}

fn eval_vector(m: &MetricExpr, ctx: &Ctx<'_>) -> Result<SeriesVec> {
    match eval(m, ctx)? {
        Value::Vector(v) => Ok(v),
        Value::Scalar(_) => Err(EngineError::Invalid(format!(
            "expected a vector, found the scalar {m}"
        ))),
    }
}

fn range_ns(ra: &RangeAgg, params: &QueryParams) -> Result<i64> {
    match ra.range {
        RangeSpan::Fixed(ns) if ns > 0 => Ok(ns),
        RangeSpan::Fixed(_) => Err(EngineError::Invalid("the range must be positive".into())),
        RangeSpan::Auto if params.step_ns > 0 => Ok(params.step_ns),
        RangeSpan::Auto if params.instant && params.end_ns > params.start_ns => {
            Ok(params.end_ns - params.start_ns)
        }
        RangeSpan::Auto => Err(EngineError::Invalid(
            "[$__auto] needs a positive step".into(),
        )),
    }
}

/// A chain of vector aggregations whose grouping is pushed down into the range
/// aggregation under it: the chain's result is the range aggregation of each group's
/// samples taken together.
struct Pushdown<'a> {
    /// The aggregation operator, the same all down the chain.
    op: VectorOp,
    /// The chain's groupings, innermost first.
    groupings: Vec<Option<&'a Grouping>>,
    /// The range aggregation at the bottom.
    range: &'a RangeAgg,
}

impl<'a> Pushdown<'a> {
    /// The pushdown of `agg`, if its result is exactly the range aggregation of each
    /// group's samples: a sum of sums (counts, bytes, rates: sums divided by the same
    /// range), a min of mins or a max of maxes.
    fn of(agg: &'a VectorAgg) -> Option<Pushdown<'a>> {
        let mut groupings = vec![agg.grouping.as_ref()];
        let mut inner = &*agg.inner;
        loop {
            match inner {
                MetricExpr::Aggregate(a) if a.op == agg.op => {
                    groupings.push(a.grouping.as_ref());
                    inner = &a.inner;
                }
                MetricExpr::Range(ra) if Self::pushable(agg.op, ra.op) => {
                    groupings.reverse();
                    return Some(Pushdown {
                        op: agg.op,
                        groupings,
                        range: ra,
                    });
                }
                _ => return None,
            }
        }
    }

    fn pushable(op: VectorOp, range: RangeOp) -> bool {
        match op {
            VectorOp::Sum => matches!(
                range,
                RangeOp::CountOverTime
                    | RangeOp::Rate
                    | RangeOp::BytesOverTime
                    | RangeOp::BytesRate
                    | RangeOp::SumOverTime
            ),
            VectorOp::Min => range == RangeOp::MinOverTime,
            VectorOp::Max => range == RangeOp::MaxOverTime,
            _ => false,
        }
    }

    /// The group of a range aggregation series: its labels through each grouping.
    fn key(&self, labels: &Labels) -> Labels {
        let mut groupings = self.groupings.iter();
        let Some(first) = groupings.next() else {
            return labels.clone();
        };
        let mut key = vector::group_key(labels, *first);
        for g in groupings {
            key = vector::group_key(&key, *g);
        }
        key
    }
}

fn eval_range(ra: &RangeAgg, ctx: &Ctx<'_>, push: Option<&Pushdown<'_>>) -> Result<SeriesVec> {
    let range = range_ns(ra, ctx.params)?;
    if let Some(p) = push {
        if let Some(counted) = count_range(ra, ctx, p, range)? {
            return Ok(counted);
        }
    }
    let pipeline = Pipeline::new(&ra.log)?;
    let unwrap = ra.unwrap.as_ref().map(|u| CompiledUnwrap {
        label: u.label.clone(),
        conversion: u.conversion,
        post_filters: u.post_filters.clone(),
    });
    let off = ra.offset_ns;
    let lo = first_window_start(ctx.steps, off, range);
    let hi = ctx.steps.last().saturating_sub(off).saturating_add(1);
    let iter = if order_free(ra) {
        ctx.source.scan(&ra.log.selector, &hints(&ra.log), lo, hi)?
    } else {
        ctx.source.select(
            &ra.log.selector,
            &hints(&ra.log),
            lo,
            hi,
            Direction::Forward,
        )?
    };
    let mut acc = RangeAcc::new(ra, ctx.steps, range, ctx.params.limits, push.map(|p| p.op));
    for item in iter {
        let e = item?;
        if !check_entry(&e, &ra.log.selector, lo, hi) {
            continue;
        }
        let sample = match &unwrap {
            Some(u) => pipeline.process_sample(&e, u),
            None => pipeline
                .process_line(&e)
                .map(|(len, labels)| (len as f64, labels)),
        };
        let Some((value, labels)) = sample else {
            continue;
        };
        let (labels, ts) = (series_labels(labels, ra), e.ts_ns.saturating_add(off));
        let Some(p) = push else {
            acc.add(labels, ts, value)?;
            continue;
        };
        if acc.step_span(ts).is_none() {
            continue;
        }
        // Unpushed, the first series with `__error__` fails the query in `finish`; it
        // is the one this sample starts.
        if let Some(err) = labels.get(ERROR_LABEL) {
            return Err(pipeline_error(err, &labels));
        }
        acc.add(p.key(&labels), ts, value)?;
    }
    let mut out = acc.finish()?;
    // In label order, whatever order the entries came in (a scan's varies from run to
    // run): `topk` ties, binary operator errors and float reductions over series depend
    // on it. Pushed down, it is the order `vector::aggregate` gives.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Whether `ra`'s value is the same whatever order its entries come in, so that it may
/// read them through [`Source::scan`]: `RangeAcc` places each sample by its own time, and
/// counts, byte counts (whole numbers), minima, maxima and quantiles do not depend on
/// order. Sums of unwrapped values (`sum_over_time`, `avg_over_time`, `rate` with
/// `unwrap`, deviations) round differently in another order, and `first_over_time` and
/// `last_over_time` pick among equal times by order: they read oldest first, so that
/// the same query gives the same answer.
fn order_free(ra: &RangeAgg) -> bool {
    match ra.op {
        RangeOp::CountOverTime
        | RangeOp::BytesOverTime
        | RangeOp::BytesRate
        | RangeOp::AbsentOverTime
        | RangeOp::MinOverTime
        | RangeOp::MaxOverTime
        | RangeOp::QuantileOverTime => true,
        RangeOp::Rate => ra.unwrap.is_none(),
        RangeOp::SumOverTime
        | RangeOp::AvgOverTime
        | RangeOp::StddevOverTime
        | RangeOp::StdvarOverTime
        | RangeOp::FirstOverTime
        | RangeOp::LastOverTime => false,
    }
}

/// The most buckets the engine asks a source to count.
const COUNT_BUCKETS_MAX: usize = 1 << 20;

/// A pushed-down `sum` over `count_over_time` or `rate` of a bare selector, answered by
/// [`Source::count`] when the source can count without reading: the buckets are the
/// greatest common divisor of the step and the range, so that every entry of a bucket
/// falls in the same step windows. `None` when the query is not of that shape or the
/// source cannot count it.
fn count_range(
    ra: &RangeAgg,
    ctx: &Ctx<'_>,
    p: &Pushdown<'_>,
    range: i64,
) -> Result<Option<SeriesVec>> {
    let only_drops_error = ra.log.pipeline.iter().all(|s| match s {
        Stage::Drop { labels } => labels
            .iter()
            .all(|l| matches!(l, LabelSel::Name(n) if n == ERROR_LABEL)),
        _ => false,
    });
    let counts_lines = matches!(ra.op, RangeOp::CountOverTime | RangeOp::Rate);
    if p.op != VectorOp::Sum
        || !counts_lines
        || ra.unwrap.is_some()
        || ra.grouping.is_some()
        || !only_drops_error
    {
        return Ok(None);
    }
    let group_by: &[String] = match p.groupings.first() {
        Some(None) | None => &[],
        Some(Some(g)) if !g.without => &g.labels,
        Some(Some(_)) => return Ok(None),
    };
    // One step (an instant query) has one window: one bucket.
    let width = if ctx.steps.n == 1 {
        range
    } else {
        gcd(ctx.steps.step, range)
    };
    let span = ctx.steps.last() - ctx.steps.start;
    let buckets = usize::try_from(span / width + range / width).unwrap_or(usize::MAX);
    if width <= 0 || buckets == 0 || buckets > COUNT_BUCKETS_MAX {
        return Ok(None);
    }
    let off = ra.offset_ns;
    let origin = first_window_start(ctx.steps, off, range);
    let req = CountRequest {
        selector: &ra.log.selector,
        group_by,
        origin_ns: origin,
        width_ns: width,
        buckets,
    };
    let Some(groups) = ctx.source.count(&req) else {
        return Ok(None);
    };
    let mut acc = RangeAcc::new(ra, ctx.steps, range, ctx.params.limits, Some(p.op));
    for (labels, counts) in groups? {
        let key = p.key(&labels);
        for (k, n) in counts.into_iter().enumerate() {
            if n > 0 {
                let ts = origin
                    .saturating_add(width.saturating_mul(k as i64))
                    .saturating_add(off);
                acc.add_count(key.clone(), ts, n)?;
            }
        }
    }
    let mut out = acc.finish()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(out))
}

/// The earliest entry time the first step's window `(t - range, t]` holds, `offset`
/// shifting it back: inclusive, in entry time.
fn first_window_start(steps: Steps, offset: i64, range: i64) -> i64 {
    steps
        .start
        .saturating_sub(offset)
        .saturating_sub(range)
        .saturating_add(1)
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    i64::try_from(a).unwrap_or(0)
}

/// A range aggregation's series labels: with `unwrap`, the unwrapped label goes, and
/// `by`/`without` apply (Loki's `LabelExtractorWithStages`).
fn series_labels(mut labels: Labels, ra: &RangeAgg) -> Labels {
    match &ra.grouping {
        Some(g) if !g.without => {
            labels.retain(|k, _| g.labels.contains(k));
            return labels;
        }
        Some(g) => labels.retain(|k, _| !g.labels.contains(k)),
        None => {}
    }
    if let Some(u) = &ra.unwrap {
        labels.remove(&u.label);
    }
    labels
}

/// A running aggregate of the samples of one series in one step's window.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    count: u64,
    a: f64,
    b: f64,
    ts: i64,
}

struct RangeAcc<'a> {
    ra: &'a RangeAgg,
    /// The vector aggregation whose grouping the series are, when pushed down.
    pushed: Option<VectorOp>,
    steps: Steps,
    range: i64,
    limits: crate::Limits,
    index: HashMap<Labels, usize>,
    series: Vec<(Labels, Vec<Acc>)>,
    raw: Vec<Vec<(i64, f64)>>,
    raw_total: usize,
}

impl<'a> RangeAcc<'a> {
    fn new(
        ra: &'a RangeAgg,
        steps: Steps,
        range: i64,
        limits: crate::Limits,
        pushed: Option<VectorOp>,
    ) -> Self {
        RangeAcc {
            ra,
            pushed,
            steps,
            range,
            limits,
            index: HashMap::new(),
            series: Vec::new(),
            raw: Vec::new(),
            raw_total: 0,
        }
    }

    /// The steps whose window `(t - range, t]` holds the (offset-shifted) time `ts`.
    fn step_span(&self, ts: i64) -> Option<(usize, usize)> {
        let (s, p, t, r) = (
            self.steps.start as i128,
            self.steps.step as i128,
            ts as i128,
            self.range as i128,
        );
        let lo = -((s - t).div_euclid(p));
        let hi = (t + r - 1 - s).div_euclid(p);
        let lo = lo.max(0);
        let hi = hi.min(self.steps.n as i128 - 1);
        (lo <= hi).then_some((lo as usize, hi as usize))
    }

    fn series_index(&mut self, labels: Labels) -> Result<usize> {
        if let Some(&i) = self.index.get(&labels) {
            return Ok(i);
        }
        let max = self.limits.max_series;
        if self.series.len() >= max {
            let message = match self.pushed {
                None => format!("{} tracks more than {max} series; narrow the selector or group with by/without", self.ra.op.name()),
                Some(op) => format!("{} grouped by the {} above it tracks more than {max} groups; group by fewer labels or narrow the selector", self.ra.op.name(), op.name()),
            };
            return Err(limit_err("max_series", max, message));
        }
        let quantile = self.ra.op == RangeOp::QuantileOverTime;
        let accs = if quantile {
            Vec::new()
        } else {
            vec![Acc::default(); self.steps.n]
        };
        self.series.push((labels.clone(), accs));
        self.raw.push(Vec::new());
        self.index.insert(labels, self.series.len() - 1);
        Ok(self.series.len() - 1)
    }

    fn add(&mut self, labels: Labels, ts: i64, v: f64) -> Result<()> {
        let Some((lo, hi)) = self.step_span(ts) else {
            return Ok(());
        };
        let i = self.series_index(labels)?;
        if self.ra.op == RangeOp::QuantileOverTime {
            self.raw_total += 1;
            let max = self.limits.max_samples_in_memory;
            if self.raw_total > max {
                return Err(limit_err(
                    "max_samples_in_memory",
                    max,
                    "quantile_over_time buffers more samples than allowed; shorten the range"
                        .into(),
                ));
            }
            self.raw[i].push((ts, v));
            return Ok(());
        }
        let op = self.ra.op;
        for acc in &mut self.series[i].1[lo..=hi] {
            update(acc, op, ts, v);
        }
        Ok(())
    }

    /// Adds `n` entries at time `ts` to a counting aggregation (`count_over_time`,
    /// `rate` without `unwrap`: their value depends only on the count).
    fn add_count(&mut self, labels: Labels, ts: i64, n: u64) -> Result<()> {
        let Some((lo, hi)) = self.step_span(ts) else {
            return Ok(());
        };
        let i = self.series_index(labels)?;
        for acc in &mut self.series[i].1[lo..=hi] {
            acc.count += n;
        }
        Ok(())
    }

    fn finish(self) -> Result<SeriesVec> {
        if self.ra.op == RangeOp::AbsentOverTime {
            return Ok(self.absent());
        }
        let secs = self.range as f64 / 1e9;
        let unwrapped = self.ra.unwrap.is_some();
        let mut out = Vec::with_capacity(self.series.len());
        for (i, (labels, accs)) in self.series.iter().enumerate() {
            if let Some(err) = labels.get(ERROR_LABEL) {
                return Err(pipeline_error(err, labels));
            }
            let points = if self.ra.op == RangeOp::QuantileOverTime {
                self.quantiles(&self.raw[i])
            } else {
                accs.iter()
                    .map(|a| (a.count > 0).then(|| value(a, self.ra.op, unwrapped, secs)))
                    .collect()
            };
            out.push((labels.clone(), points));
        }
        Ok(out)
    }

    fn quantiles(&self, raw: &[(i64, f64)]) -> Vec<Option<f64>> {
        let q = self.ra.param.unwrap_or(0.5);
        let mut sorted = raw.to_vec();
        sorted.sort_by_key(|(t, _)| *t);
        (0..self.steps.n)
            .map(|k| {
                let t = self.steps.at(k);
                let from = sorted.partition_point(|(ts, _)| *ts <= t.saturating_sub(self.range));
                let to = sorted.partition_point(|(ts, _)| *ts <= t);
                let mut vals: Vec<f64> = sorted[from..to].iter().map(|(_, v)| *v).collect();
                (!vals.is_empty()).then(|| quantile(q, &mut vals))
            })
            .collect()
    }

    /// `absent_over_time`: 1 at the steps where no series had a sample, labelled with
    /// the selector's equality matchers (as Loki and Prometheus do).
    fn absent(&self) -> SeriesVec {
        let points: Vec<Option<f64>> = (0..self.steps.n)
            .map(|k| {
                let any = self.series.iter().any(|(_, accs)| accs[k].count > 0);
                (!any).then_some(1.0)
            })
            .collect();
        if points.iter().all(Option::is_none) {
            return Vec::new();
        }
        let mut labels = Labels::new();
        let mut dup = Vec::new();
        for m in &self.ra.log.selector {
            if m.op == crate::MatchOp::Eq
                && labels.insert(m.name.clone(), m.value.clone()).is_some()
            {
                dup.push(m.name.clone());
            }
        }
        for d in dup {
            labels.remove(&d);
        }
        vec![(labels, points)]
    }
}

fn pipeline_error(err: &str, labels: &Labels) -> EngineError {
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    EngineError::Pipeline(format!(
        "'{err}' for series: '{{{}}}'. Use a label filter to intentionally skip this error. (e.g | __error__!=\"{err}\"). To skip all errors you can match empty errors (e.g | __error__=\"\")",
        shown.join(", ")
    ))
}

fn update(acc: &mut Acc, op: RangeOp, ts: i64, v: f64) {
    let first = acc.count == 0;
    acc.count += 1;
    let count = acc.count as f64;
    match op {
        RangeOp::CountOverTime | RangeOp::AbsentOverTime | RangeOp::QuantileOverTime => {}
        RangeOp::Rate | RangeOp::BytesOverTime | RangeOp::BytesRate | RangeOp::SumOverTime => {
            acc.a += v
        }
        RangeOp::MinOverTime if first || v < acc.a || acc.a.is_nan() => acc.a = v,
        RangeOp::MaxOverTime if first || v > acc.a || acc.a.is_nan() => acc.a = v,
        RangeOp::MinOverTime | RangeOp::MaxOverTime => {}
        RangeOp::AvgOverTime => {
            // Loki's avg_over_time: an infinite mean stays as it is.
            if acc.a.is_infinite()
                && (v.is_finite() || (v.is_infinite() && (acc.a > 0.0) == (v > 0.0)))
            {
                return;
            }
            acc.a += v / count - acc.a / count;
        }
        RangeOp::StddevOverTime | RangeOp::StdvarOverTime => {
            let delta = v - acc.a;
            acc.a += delta / count;
            acc.b += delta * (v - acc.a);
        }
        RangeOp::FirstOverTime if first || ts < acc.ts => (acc.a, acc.ts) = (v, ts),
        RangeOp::LastOverTime if first || ts >= acc.ts => (acc.a, acc.ts) = (v, ts),
        RangeOp::FirstOverTime | RangeOp::LastOverTime => {}
    }
}

fn value(acc: &Acc, op: RangeOp, unwrapped: bool, secs: f64) -> f64 {
    let count = acc.count as f64;
    match op {
        RangeOp::CountOverTime => count,
        RangeOp::Rate if unwrapped => acc.a / secs,
        RangeOp::Rate => count / secs,
        RangeOp::BytesRate => acc.a / secs,
        RangeOp::StdvarOverTime => acc.b / count,
        RangeOp::StddevOverTime => (acc.b / count).sqrt(),
        RangeOp::AbsentOverTime => 1.0,
        _ => acc.a,
    }
}

/// Prometheus' quantile: linear interpolation between the closest ranks.
fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

#[cfg(test)]
mod tests;
