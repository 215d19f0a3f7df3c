//! Per-step operations on evaluated series: vector aggregations, binary operators and
//! `label_replace`, with Prometheus' semantics.
//!
//! A vector value is series-major: each series' labels once, then its value (or none)
//! at every step, so label work (grouping keys, matching signatures) is done once per
//! series rather than once per point.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::ast::*;
use crate::error::{EngineError, Result};
use crate::Labels;

/// One series: its labels and its value at each step.
pub(crate) type SeriesVec = Vec<(Labels, Vec<Option<f64>>)>;

/// An evaluated sub-expression.
pub(crate) enum Value {
    /// One value per step.
    Scalar(Vec<f64>),
    /// Series.
    Vector(SeriesVec),
}

/// The labels of the group a series with `labels` falls in.
pub(crate) fn group_key(labels: &Labels, grouping: Option<&Grouping>) -> Labels {
    match grouping {
        None => Labels::new(),
        Some(g) if g.without => labels
            .iter()
            .filter(|(k, _)| !g.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(g) => labels
            .iter()
            .filter(|(k, _)| g.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn groups(series: &SeriesVec, grouping: Option<&Grouping>) -> BTreeMap<Labels, Vec<usize>> {
    let mut out: BTreeMap<Labels, Vec<usize>> = BTreeMap::new();
    for (i, (labels, _)) in series.iter().enumerate() {
        out.entry(group_key(labels, grouping)).or_default().push(i);
    }
    out
}

fn reduce(op: VectorOp, values: &[f64]) -> f64 {
    let n = values.len() as f64;
    match op {
        VectorOp::Sum => values.iter().sum(),
        VectorOp::Avg => values.iter().sum::<f64>() / n,
        VectorOp::Count => n,
        VectorOp::Min => {
            values
                .iter()
                .copied()
                .fold(f64::NAN, |m, v| if v < m || m.is_nan() { v } else { m })
        }
        VectorOp::Max => {
            values
                .iter()
                .copied()
                .fold(f64::NAN, |m, v| if v > m || m.is_nan() { v } else { m })
        }
        VectorOp::Stddev | VectorOp::Stdvar => {
            let (mut mean, mut aux, mut count) = (0.0, 0.0, 0.0);
            for v in values {
                count += 1.0;
                let delta = v - mean;
                mean += delta / count;
                aux += delta * (v - mean);
            }
            if op == VectorOp::Stddev {
                (aux / count).sqrt()
            } else {
                aux / count
            }
        }
        VectorOp::Topk | VectorOp::Bottomk | VectorOp::Sort | VectorOp::SortDesc => f64::NAN,
    }
}

/// `sum by (..) (v)` and the other vector aggregations.
pub(crate) fn aggregate(agg: &VectorAgg, inner: SeriesVec, n: usize) -> SeriesVec {
    match agg.op {
        VectorOp::Sort | VectorOp::SortDesc => inner,
        VectorOp::Topk | VectorOp::Bottomk => top_k(agg, inner, n),
        op => groups(&inner, agg.grouping.as_ref())
            .into_iter()
            .filter_map(|(key, members)| {
                let points: Vec<Option<f64>> = (0..n)
                    .map(|k| {
                        let vals: Vec<f64> =
                            members.iter().filter_map(|&i| inner[i].1[k]).collect();
                        (!vals.is_empty()).then(|| reduce(op, &vals))
                    })
                    .collect();
                points.iter().any(Option::is_some).then_some((key, points))
            })
            .collect(),
    }
}

/// `topk(k, v)`/`bottomk(k, v)`: per group and step, the k largest (smallest) samples
/// keep their own labels; NaN ranks last.
#[allow(clippy::needless_range_loop)] // `step` indexes both the input points and `out`
fn top_k(agg: &VectorAgg, inner: SeriesVec, n: usize) -> SeriesVec {
    let k = agg.param.unwrap_or(1.0).max(0.0) as usize;
    let top = agg.op == VectorOp::Topk;
    let mut out: Vec<Vec<Option<f64>>> = vec![vec![None; n]; inner.len()];
    for members in groups(&inner, agg.grouping.as_ref()).values() {
        for step in 0..n {
            let mut vals: Vec<(usize, f64)> = members
                .iter()
                .filter_map(|&i| inner[i].1[step].map(|v| (i, v)))
                .collect();
            vals.sort_by(|a, b| {
                let ord = if top {
                    b.1.total_cmp(&a.1)
                } else {
                    a.1.total_cmp(&b.1)
                };
                a.1.is_nan().cmp(&b.1.is_nan()).then(ord)
            });
            for (i, v) in vals.into_iter().take(k) {
                out[i][step] = Some(v);
            }
        }
    }
    inner
        .into_iter()
        .zip(out)
        .filter(|(_, p)| p.iter().any(Option::is_some))
        .map(|((labels, _), p)| (labels, p))
        .collect()
}

fn arith(op: BinOp, x: f64, y: f64) -> f64 {
    match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => x / y,
        BinOp::Mod => x % y,
        BinOp::Pow => x.powf(y),
        _ => f64::NAN,
    }
}

/// The value and whether to keep it, as Prometheus' `vectorElemBinop`.
fn elem(op: BinOp, x: f64, y: f64) -> (f64, bool) {
    match op {
        BinOp::Eq => (x, x == y),
        BinOp::Neq => (x, x != y),
        BinOp::Gt => (x, x > y),
        BinOp::Lt => (x, x < y),
        BinOp::Ge => (x, x >= y),
        BinOp::Le => (x, x <= y),
        _ => (arith(op, x, y), true),
    }
}

/// The result of one element operation, `None` when a comparison filters it out.
fn combine(b: &BinaryExpr, x: f64, y: f64, keep_value: f64) -> Option<f64> {
    let (v, keep) = elem(b.op, x, y);
    if !b.op.is_comparison() {
        Some(v)
    } else if b.return_bool {
        Some(if keep { 1.0 } else { 0.0 })
    } else {
        keep.then_some(keep_value)
    }
}

/// A binary operation on two evaluated operands.
pub(crate) fn binary(b: &BinaryExpr, lhs: Value, rhs: Value, n: usize) -> Result<Value> {
    Ok(match (lhs, rhs) {
        (Value::Scalar(x), Value::Scalar(y)) => Value::Scalar(
            x.iter()
                .zip(&y)
                .map(|(a, c)| {
                    let (v, keep) = elem(b.op, *a, *c);
                    if b.op.is_comparison() {
                        if keep {
                            1.0
                        } else {
                            0.0
                        }
                    } else {
                        v
                    }
                })
                .collect(),
        ),
        (Value::Vector(v), Value::Scalar(s)) => Value::Vector(vector_scalar(b, v, &s, false)),
        (Value::Scalar(s), Value::Vector(v)) => Value::Vector(vector_scalar(b, v, &s, true)),
        (Value::Vector(l), Value::Vector(r)) if b.op.is_set() => Value::Vector(set_op(b, l, r, n)),
        (Value::Vector(l), Value::Vector(r)) => Value::Vector(vector_vector(b, l, r, n)?),
    })
}

fn vector_scalar(b: &BinaryExpr, v: SeriesVec, s: &[f64], scalar_lhs: bool) -> SeriesVec {
    v.into_iter()
        .filter_map(|(labels, points)| {
            let out: Vec<Option<f64>> = points
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let vv = (*p)?;
                    let (x, y) = if scalar_lhs { (s[k], vv) } else { (vv, s[k]) };
                    combine(b, x, y, vv)
                })
                .collect();
            out.iter().any(Option::is_some).then_some((labels, out))
        })
        .collect()
}

fn signature(labels: &Labels, m: Option<&VectorMatching>) -> Labels {
    match m {
        None => labels.clone(),
        Some(m) => labels
            .iter()
            .filter(|(k, _)| m.labels.contains(k) == m.on)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn set_op(b: &BinaryExpr, l: SeriesVec, r: SeriesVec, n: usize) -> SeriesVec {
    let m = b.matching.as_ref();
    let lsig: Vec<Labels> = l.iter().map(|(x, _)| signature(x, m)).collect();
    let rsig: Vec<Labels> = r.iter().map(|(x, _)| signature(x, m)).collect();
    let mut lout: Vec<Vec<Option<f64>>> = vec![vec![None; n]; l.len()];
    let mut rout: Vec<Vec<Option<f64>>> = vec![vec![None; n]; r.len()];
    for k in 0..n {
        let present = |s: &SeriesVec, sig: &[Labels]| -> HashSet<Labels> {
            s.iter()
                .zip(sig)
                .filter(|((_, p), _)| p[k].is_some())
                .map(|(_, g)| g.clone())
                .collect()
        };
        let rset = present(&r, &rsig);
        let lset = present(&l, &lsig);
        for (i, (_, p)) in l.iter().enumerate() {
            let keep = match b.op {
                BinOp::And => rset.contains(&lsig[i]),
                BinOp::Unless => !rset.contains(&lsig[i]),
                _ => true,
            };
            if keep {
                lout[i][k] = p[k];
            }
        }
        if b.op == BinOp::Or {
            for (j, (_, p)) in r.iter().enumerate() {
                if !lset.contains(&rsig[j]) {
                    rout[j][k] = p[k];
                }
            }
        }
    }
    let mut out: BTreeMap<Labels, Vec<Option<f64>>> = BTreeMap::new();
    for ((labels, _), points) in l.into_iter().zip(lout).chain(r.into_iter().zip(rout)) {
        if points.iter().any(Option::is_some) {
            let slot = out.entry(labels).or_insert_with(|| vec![None; n]);
            for (s, p) in slot.iter_mut().zip(points) {
                *s = s.or(p);
            }
        }
    }
    out.into_iter().collect()
}

fn result_labels(many: &Labels, one: &Labels, m: Option<&VectorMatching>) -> Labels {
    let mut out = many.clone();
    let Some(m) = m else {
        return out;
    };
    match &m.group {
        None if m.on => out.retain(|k, _| m.labels.contains(k)),
        None => out.retain(|k, _| !m.labels.contains(k)),
        Some(g) => {
            for name in &g.include {
                match one.get(name) {
                    Some(v) if !v.is_empty() => {
                        out.insert(name.clone(), v.clone());
                    }
                    _ => {
                        out.remove(name);
                    }
                }
            }
        }
    }
    out
}

fn fmt_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Arithmetic and comparisons between two vectors: one-to-one, or many-to-one with
/// `group_left` / one-to-many with `group_right`.
fn vector_vector(b: &BinaryExpr, l: SeriesVec, r: SeriesVec, n: usize) -> Result<SeriesVec> {
    let m = b.matching.as_ref();
    let group = m.and_then(|m| m.group.as_ref());
    let swapped = group.is_some_and(|g| g.right);
    let (many, one) = if swapped { (&r, &l) } else { (&l, &r) };
    let many_sig: Vec<Labels> = many.iter().map(|(x, _)| signature(x, m)).collect();
    let one_sig: Vec<Labels> = one.iter().map(|(x, _)| signature(x, m)).collect();
    let mut out: BTreeMap<Labels, Vec<Option<f64>>> = BTreeMap::new();
    for k in 0..n {
        let mut one_map: HashMap<&Labels, usize> = HashMap::new();
        for (j, (_, p)) in one.iter().enumerate() {
            if p[k].is_some() && one_map.insert(&one_sig[j], j).is_some() {
                let side = if swapped { "left" } else { "right" };
                return Err(EngineError::Invalid(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation: many-to-many matching not allowed: matching labels must be unique on one side",
                    fmt_labels(&one_sig[j])
                )));
            }
        }
        let mut matched: HashSet<&Labels> = HashSet::new();
        let mut produced: HashSet<Labels> = HashSet::new();
        for (i, (many_labels, p)) in many.iter().enumerate() {
            let (Some(mv), Some(&j)) = (p[k], one_map.get(&many_sig[i])) else {
                continue;
            };
            if group.is_none() && !matched.insert(&many_sig[i]) {
                return Err(EngineError::Invalid(format!(
                    "multiple matches for labels {}: many-to-one matching must be explicit (group_left/group_right)",
                    fmt_labels(&many_sig[i])
                )));
            }
            let Some(ov) = one[j].1[k] else { continue };
            let (x, y) = if swapped { (ov, mv) } else { (mv, ov) };
            let Some(v) = combine(b, x, y, x) else {
                continue;
            };
            let labels = result_labels(many_labels, &one[j].0, m);
            if !produced.insert(labels.clone()) {
                return Err(EngineError::Invalid(format!(
                    "multiple matches for labels {}: grouping labels must ensure unique matches",
                    fmt_labels(&labels)
                )));
            }
            out.entry(labels).or_insert_with(|| vec![None; n])[k] = Some(v);
        }
    }
    Ok(out.into_iter().collect())
}

/// `label_replace(v, dst, replacement, src, regex)`.
pub(crate) fn label_replace(lr: &LabelReplace, inner: SeriesVec) -> Result<SeriesVec> {
    let re = crate::matcher::anchored(&lr.regex)
        .map_err(|e| EngineError::Invalid(format!("invalid regex in label_replace: {e}")))?;
    let mut out: BTreeMap<Labels, Vec<Option<f64>>> = BTreeMap::new();
    for (mut labels, points) in inner {
        let src = labels.get(&lr.src).cloned().unwrap_or_default();
        if let Some(caps) = re.captures(&src) {
            let mut value = String::new();
            caps.expand(&lr.replacement, &mut value);
            if value.is_empty() {
                labels.remove(&lr.dst);
            } else {
                labels.insert(lr.dst.clone(), value);
            }
        }
        if out.insert(labels, points).is_some() {
            return Err(EngineError::Invalid(
                "label_replace: vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(out.into_iter().collect())
}
