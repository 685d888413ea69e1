//! Classification metrics: accuracy for every task; precision, recall and F1 of the
//! positive class (label 1) for binary tasks, macro-averaged for more classes.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Metrics {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Metrics {
    pub fn compute(predictions: &[usize], labels: &[usize], num_labels: usize) -> Metrics {
        assert_eq!(predictions.len(), labels.len());
        let n = labels.len().max(1) as f64;
        let correct = predictions.iter().zip(labels).filter(|(p, l)| p == l).count() as f64;
        let per_class = |class: usize| {
            let tp = predictions.iter().zip(labels).filter(|&(&p, &l)| p == class && l == class).count() as f64;
            let predicted = predictions.iter().filter(|&&p| p == class).count() as f64;
            let actual = labels.iter().filter(|&&l| l == class).count() as f64;
            let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
            let recall = if actual > 0.0 { tp / actual } else { 0.0 };
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            (precision, recall, f1)
        };
        let (precision, recall, f1) = if num_labels == 2 {
            per_class(1)
        } else {
            let all: Vec<_> = (0..num_labels).map(per_class).collect();
            let k = num_labels as f64;
            (
                all.iter().map(|c| c.0).sum::<f64>() / k,
                all.iter().map(|c| c.1).sum::<f64>() / k,
                all.iter().map(|c| c.2).sum::<f64>() / k,
            )
        };
        Metrics { accuracy: correct / n, precision, recall, f1 }
    }
}

/// Index of the largest value in each row of `logits` (`rows × classes`).
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
                .0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_metrics_by_hand() {
        // tp = 2, fp = 1, fn = 1, tn = 1
        let m = Metrics::compute(&[1, 1, 1, 0, 0], &[1, 1, 0, 1, 0], 2);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn argmax_picks_largest() {
        assert_eq!(argmax_rows(&[0.1, 0.9, 2.0, -1.0], 2), vec![1, 0]);
    }
}
