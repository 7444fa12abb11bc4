//! The decoupling losses: L = CE + lambda_m * L_MI + lambda_k * L_KL + lambda_s * L_S, and the
//! optional group-sparsity term lambda_g * L_G for compaction.

use tch::{Kind, Reduction, Tensor};

use super::config::LossWeights;
use super::decoupled::ForwardOutput;

/// Each term (already averaged over the batch) and the weighted total.
#[derive(Debug)]
pub struct LossTerms {
    pub cross_entropy: Tensor,
    pub mutual_information: Tensor,
    pub alignment: Tensor,
    pub sparsity: Tensor,
    pub group_sparsity: Tensor,
    pub total: Tensor,
}

/// L_MI = sum over gated layers of CE(W_l z_l, label): each layer's path alone must tell the
/// class (a variational lower bound on the mutual information between path and class).
pub fn mutual_information_loss(mi_logits: &[Tensor], labels: &Tensor) -> Tensor {
    sum_terms(mi_logits.iter().map(|logits| logits.cross_entropy_for_logits(labels)))
}

/// L_KL = sum over gated layers of KL(softmax(z_l) || softmax(o_l)), batch mean, where o_l is
/// the globally pooled pre-gate output. The direction is the reference's VGG code's.
pub fn alignment_loss(gates: &[Tensor], pooled_outputs: &[Tensor]) -> Tensor {
    sum_terms(gates.iter().zip(pooled_outputs).map(|(z, o)| {
        let p = z.softmax(1, Kind::Float);
        let log_q = o.log_softmax(1, Kind::Float);
        // kl_div(input = log q, target = p) = sum p * (log p - log q)
        let n = z.size()[0] as f64;
        log_q.kl_div(&p, Reduction::Sum, false) / n
    }))
}

/// L_S = sum over gated layers of | mean over batch of ||z_l||_1 - target * C_l |.
pub fn sparsity_loss(gates: &[Tensor], target_density: f64) -> Tensor {
    sum_terms(gates.iter().map(|z| {
        let c = z.size()[1] as f64;
        let open = z.sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float);
        (open - target_density * c).abs()
    }))
}

/// L_G = sum over gated layers of the mean over filters of sqrt(mean over batch of z^2): an
/// L2,1 (group-lasso) norm whose groups are the filters, so it drives a filter's gate to zero
/// for every input at once rather than input by input as L_S does. A filter closed for all
/// inputs costs nothing at inference and is removed by compaction.
pub fn group_sparsity_loss(gates: &[Tensor]) -> Tensor {
    sum_terms(gates.iter().map(|z| {
        let usage = (z.square().mean_dim([0i64].as_slice(), false, Kind::Float) + 1e-12).sqrt();
        usage.mean(Kind::Float)
    }))
}

/// All terms for one forward pass.
pub fn decoupling_loss(out: &ForwardOutput, labels: &Tensor, w: &LossWeights) -> LossTerms {
    let cross_entropy = out.logits.cross_entropy_for_logits(labels);
    let mutual_information = mutual_information_loss(&out.mi_logits, labels);
    let alignment = alignment_loss(&out.gates, &out.pooled_outputs);
    let sparsity = sparsity_loss(&out.gates, w.target_density);
    let group_sparsity = if w.group_sparsity > 0.0 { group_sparsity_loss(&out.gates) } else { Tensor::from(0f32) };
    let total = &cross_entropy
        + &mutual_information * w.mutual_information
        + &alignment * w.alignment
        + &sparsity * w.sparsity
        + &group_sparsity * w.group_sparsity;
    LossTerms { cross_entropy, mutual_information, alignment, sparsity, group_sparsity, total }
}

fn sum_terms(terms: impl Iterator<Item = Tensor>) -> Tensor {
    terms.fold(Tensor::from(0f32), |acc, t| acc + t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).view(shape)
    }

    fn close(a: &Tensor, b: f64) -> bool {
        (a.double_value(&[]) - b).abs() < 1e-5
    }

    #[test]
    fn sparsity_on_a_hand_made_example() {
        // Layer A: 2 samples with 3 and 1 open of 4 -> mean 2; layer B: 1 and 1 open of 2 -> 1.
        let a = t(&[1., 1., 1., 0., 0., 1., 0., 0.], &[2, 4]);
        let b = t(&[1., 0., 0., 1.], &[2, 2]);
        assert!(close(&sparsity_loss(&[a.shallow_clone(), b.shallow_clone()], 0.0), 3.0));
        // Target 0.25: |2 - 1| + |1 - 0.5| = 1.5
        assert!(close(&sparsity_loss(&[a, b], 0.25), 1.5));
    }

    #[test]
    fn group_sparsity_counts_filters_not_inputs() {
        // Two inputs; the same number of open gates (2 of 4 each), once on the same filters
        // and once on different ones: L_S sees no difference, L_G prefers the shared filters.
        let shared = t(&[1., 1., 0., 0., 1., 1., 0., 0.], &[2, 4]);
        let spread = t(&[1., 1., 0., 0., 0., 0., 1., 1.], &[2, 4]);
        assert!(close(&sparsity_loss(&[shared.shallow_clone()], 0.0), 2.0));
        assert!(close(&sparsity_loss(&[spread.shallow_clone()], 0.0), 2.0));
        assert!(close(&group_sparsity_loss(&[shared]), 0.5));
        assert!(close(&group_sparsity_loss(&[spread]), 0.5f64.sqrt()));
    }

    #[test]
    fn mutual_information_on_a_hand_made_example() {
        // Uniform logits over 4 classes: CE = ln 4 per layer, two layers.
        let logits = Tensor::zeros([3, 4], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 3]);
        let loss = mutual_information_loss(&[logits.shallow_clone(), logits], &labels);
        assert!(close(&loss, 2.0 * 4f64.ln()));
    }

    #[test]
    fn alignment_on_a_hand_made_example() {
        // z = [1, 0], o = [0, 0]: p = softmax(z) = [e/(1+e), 1/(1+e)], q = [1/2, 1/2].
        let z = t(&[1., 0.], &[1, 2]);
        let o = t(&[0., 0.], &[1, 2]);
        let e = std::f64::consts::E;
        let (p0, p1) = (e / (1. + e), 1. / (1. + e));
        let expected = p0 * (p0 / 0.5).ln() + p1 * (p1 / 0.5).ln();
        assert!(close(&alignment_loss(&[z.shallow_clone()], &[o]), expected));
        // Identical distributions: zero.
        assert!(close(&alignment_loss(&[z.shallow_clone()], &[z]), 0.0));
    }
}
