//! Path-level interpretation (the paper's first application): which filters serve which
//! class. Works on plain frequency tables so that it can be checked on hand-made paths.

use serde::{Deserialize, Serialize};

/// A filter is *open for* a class when its gate is open for at least this fraction of the
/// class's inputs (the binarised template).
pub const OPEN_FOR_CLASS: f64 = 0.5;

/// How one gated layer's filters divide between classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterRoles {
    /// Open for exactly one class, and at least twice as often for it as for any other.
    pub class_specific: usize,
    /// Open for two classes or more.
    pub shared: usize,
    /// Open for no class (rarely or inconsistently used).
    pub unused: usize,
    /// For each class, its class-specific filters (indices within the layer).
    pub specific_by_class: Vec<Vec<usize>>,
}

/// `frequency[class][filter]` of one layer -> the roles of its filters.
pub fn filter_roles(frequency: &[Vec<f64>]) -> FilterRoles {
    let classes = frequency.len();
    let filters = frequency.first().map(|f| f.len()).unwrap_or(0);
    let mut roles = FilterRoles { class_specific: 0, shared: 0, unused: 0, specific_by_class: vec![Vec::new(); classes] };
    for f in 0..filters {
        let column: Vec<f64> = (0..classes).map(|k| frequency[k][f]).collect();
        let open_for: Vec<usize> = (0..classes).filter(|&k| column[k] >= OPEN_FOR_CLASS).collect();
        match open_for.as_slice() {
            [] => roles.unused += 1,
            [only] => {
                let others = (0..classes).filter(|k| k != only).map(|k| column[k]).fold(0.0, f64::max);
                if column[*only] >= 2.0 * others {
                    roles.class_specific += 1;
                    roles.specific_by_class[*only].push(f);
                } else {
                    roles.shared += 1;
                }
            }
            _ => roles.shared += 1,
        }
    }
    roles
}

/// Jaccard similarity of the binarised templates (open sets) of every pair of classes;
/// `templates[class][bit]` are open frequencies. Two empty open sets count as identical.
pub fn jaccard_similarity(templates: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let open: Vec<Vec<bool>> = templates.iter().map(|t| t.iter().map(|&f| f >= OPEN_FOR_CLASS).collect()).collect();
    open.iter()
        .map(|a| {
            open.iter()
                .map(|b| {
                    let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
                    let either = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
                    if either == 0 { 1.0 } else { both as f64 / either as f64 }
                })
                .collect()
        })
        .collect()
}

/// Per-class open frequency `[class][bit]` from 0/1 paths and labels.
pub fn templates_from_paths(paths: &[Vec<u8>], labels: &[usize], classes: usize) -> Vec<Vec<f64>> {
    let bits = paths.first().map(|p| p.len()).unwrap_or(0);
    let mut sums = vec![vec![0.0; bits]; classes];
    let mut counts = vec![0usize; classes];
    for (path, &label) in paths.iter().zip(labels) {
        counts[label] += 1;
        for (s, &b) in sums[label].iter_mut().zip(path) {
            *s += b as f64;
        }
    }
    for (row, &n) in sums.iter_mut().zip(&counts) {
        if n > 0 {
            row.iter_mut().for_each(|s| *s /= n as f64);
        }
    }
    sums
}

/// Filters whose state in `path` most supports `class` over `rival`: for each bit, the
/// evidence is `t_class - t_rival` if the bit is open and its negative if closed; returns
/// the `k` bits with the largest evidence, as (bit, evidence).
pub fn separating_bits(path: &[u8], class: &[f64], rival: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut evidence: Vec<(usize, f64)> = path
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let diff = class[i] - rival[i];
            (i, if b != 0 { diff } else { -diff })
        })
        .collect();
    evidence.sort_by(|a, b| b.1.total_cmp(&a.1));
    evidence.truncate(k);
    evidence
}

/// Splits a flat bit index into (layer, filter) given the layers' widths.
pub fn layer_of(bit: usize, sizes: &[usize]) -> (usize, usize) {
    let mut rest = bit;
    for (layer, &size) in sizes.iter().enumerate() {
        if rest < size {
            return (layer, rest);
        }
        rest -= size;
    }
    (sizes.len(), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes, one layer of 4 filters. Class 0 uses filters {0, 1}, class 1 uses
    /// {1, 2}, class 2 uses {1} only; filter 3 is never used.
    fn hand_made() -> (Vec<Vec<u8>>, Vec<usize>) {
        let paths = vec![
            vec![1, 1, 0, 0],
            vec![1, 1, 0, 0],
            vec![0, 1, 1, 0],
            vec![0, 1, 1, 0],
            vec![0, 1, 0, 0],
            vec![1, 1, 0, 0], // a class-2 input that also opens filter 0
        ];
        (paths, vec![0, 0, 1, 1, 2, 2])
    }

    #[test]
    fn templates_are_per_class_open_frequencies() {
        let (paths, labels) = hand_made();
        let t = templates_from_paths(&paths, &labels, 3);
        assert_eq!(t[0], vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(t[1], vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(t[2], vec![0.5, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn roles_and_similarity_on_hand_made_paths() {
        let (paths, labels) = hand_made();
        let t = templates_from_paths(&paths, &labels, 3);
        let roles = filter_roles(&t);
        // Filter 0: open for classes 0 and 2 (0.5 counts) -> shared; filter 1: shared;
        // filter 2: class 1 only -> specific; filter 3: unused.
        assert_eq!((roles.class_specific, roles.shared, roles.unused), (1, 2, 1));
        assert_eq!(roles.specific_by_class, vec![vec![], vec![2], vec![]]);
        let s = jaccard_similarity(&t);
        // Open sets: {0,1}, {1,2}, {0,1}.
        assert!((s[0][1] - 1.0 / 3.0).abs() < 1e-12);
        assert!((s[0][2] - 1.0).abs() < 1e-12);
        assert!((s[1][2] - 1.0 / 3.0).abs() < 1e-12);
        assert!((0..3).all(|i| s[i][i] == 1.0));
    }

    #[test]
    fn separating_bits_rank_evidence_for_the_class() {
        let class = [1.0, 1.0, 0.0, 0.5];
        let rival = [0.0, 1.0, 1.0, 0.5];
        // Bit 0 open (class uses it, rival does not): +1; bit 2 closed (rival uses it): +1.
        let top = separating_bits(&[1, 1, 0, 0], &class, &rival, 2);
        let bits: Vec<usize> = top.iter().map(|t| t.0).collect();
        assert!(bits.contains(&0) && bits.contains(&2), "{top:?}");
        assert_eq!(layer_of(5, &[4, 4]), (1, 1));
    }
}
