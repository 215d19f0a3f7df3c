//! `GET /api/v1/labels` and `GET /api/v1/labels/{name}/values`: the stream label names,
//! and the values of one, seen in the time range searched.

use serde::{Deserialize, Serialize};

/// The answer of `GET /api/v1/labels`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LabelsResponse {
    /// Every label name held in the time range, sorted.
    pub labels: Vec<String>,
}

/// The answer of `GET /api/v1/labels/{name}/values`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LabelValuesResponse {
    /// The label asked about (`{name}` of the path).
    pub label: String,
    /// Its values in the time range, sorted.
    pub values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{keys_sorted, round_trip};

    #[test]
    fn label_answers_round_trip() {
        let names = LabelsResponse {
            labels: vec!["cluster".into(), "namespace".into(), "service".into()],
        };
        assert_eq!(
            round_trip(&names),
            r#"{"labels":["cluster","namespace","service"]}"#
        );
        let values = LabelValuesResponse {
            label: "service".into(),
            values: vec!["api".into(), "checkout".into()],
        };
        keys_sorted(&values);
        assert_eq!(
            round_trip(&values),
            r#"{"label":"service","values":["api","checkout"]}"#
        );
    }
}
