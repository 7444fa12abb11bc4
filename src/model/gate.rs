//! The architecture controlling module (ACM): per input, a binary gate per filter.

use tch::{nn, Kind, Tensor};

/// How gates are computed (and whether BatchNorm uses batch statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// Training: improved semantic hashing. Noisy logits; a random half of the entries take
    /// the hard 0/1 value and the rest the soft value; gradients flow as if soft everywhere.
    Train,
    /// Training with every gate forced open: the plain CNN (pretraining phase).
    PlainTrain,
    /// Inference: hard gates `1[y > 0]`, no noise. Zero gradient through the gates.
    Eval,
    /// Inference gates (hard, no noise) while BatchNorm re-estimates its running statistics:
    /// training sees noisy gates, so the statistics it leaves behind do not match the
    /// activations of the noise-free inference paths.
    RecalibrateNorm,
    /// Inference values with a straight-through surrogate gradient (backward as if the gate
    /// were `sigmoid(y)`), so attacks see through the hard gates.
    EvalSurrogate,
}

impl GateMode {
    /// Whether BatchNorm uses (and updates) batch statistics.
    pub fn is_training(self) -> bool {
        matches!(self, GateMode::Train | GateMode::PlainTrain | GateMode::RecalibrateNorm)
    }
}

/// One controlling module: `gate_logits = FC2(ReLU(FC1(GAP(x))))`, plus the bias-free
/// mutual-information head `W_l: C_out -> classes` used only by the training loss.
#[derive(Debug)]
pub struct ControlModule {
    pub(super) fc1: nn::Linear,
    pub(super) fc2: nn::Linear,
    pub(super) mi_head: nn::Linear,
}

impl ControlModule {
    /// Initialised as in the reference: FC1 weights 0 and biases 1, FC2 Kaiming weights and
    /// bias 1, so every gate starts open and the net starts as the plain CNN.
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, hidden: i64, num_classes: i64) -> Self {
        let fc1 = nn::linear(
            p / "fc1",
            c_in,
            hidden,
            nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: Some(nn::Init::Const(1.0)),
                bias: true,
            },
        );
        let fc2 = nn::linear(
            p / "fc2",
            hidden,
            c_out,
            nn::LinearConfig { bs_init: Some(nn::Init::Const(1.0)), ..Default::default() },
        );
        let mi_head = nn::linear(
            p / "mi_head",
            c_out,
            num_classes,
            nn::LinearConfig { bias: false, ..Default::default() },
        );
        ControlModule { fc1, fc2, mi_head }
    }

    /// Gate logits `[N, C_out]` from the layer's input `[N, C_in, H, W]`.
    pub fn gate_logits(&self, layer_input: &Tensor) -> Tensor {
        let pooled = layer_input.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        pooled.apply(&self.fc1).relu().apply(&self.fc2)
    }

    /// Mutual-information head logits `[N, classes]` from gates `[N, C_out]`.
    pub fn mi_logits(&self, gates: &Tensor) -> Tensor {
        gates.apply(&self.mi_head)
    }
}

/// Turns gate logits into gates according to `mode`.
pub fn gates_from_logits(logits: &Tensor, mode: GateMode) -> Tensor {
    match mode {
        GateMode::Eval | GateMode::RecalibrateNorm => logits.gt(0.0).to_kind(Kind::Float),
        GateMode::PlainTrain => logits.ones_like(),
        GateMode::EvalSurrogate => {
            let hard = logits.gt(0.0).to_kind(Kind::Float);
            let soft = logits.sigmoid();
            &soft + (hard - &soft).detach()
        }
        GateMode::Train => semantic_hashing(logits),
    }
}

/// Improved semantic hashing (Kaiser & Bengio 2018) as the paper uses it. The hard/soft
/// choice is drawn per entry (the reference draws it per sample, by mistake).
fn semantic_hashing(logits: &Tensor) -> Tensor {
    let noisy = logits + logits.randn_like();
    let soft = (noisy.sigmoid() * 1.2 - 0.1).clamp(0.0, 1.0);
    let hard = noisy.gt(0.0).to_kind(Kind::Float);
    let use_hard = logits.rand_like().lt(0.5);
    let value = hard.where_self(&use_hard, &soft);
    &soft + (value - &soft).detach()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_gates_are_exactly_binary() {
        let y = Tensor::randn([64, 32], (Kind::Float, tch::Device::Cpu)) * 3.0;
        let z = gates_from_logits(&y, GateMode::Eval);
        let binary = z.eq(0.0).logical_or(&z.eq(1.0)).all().int64_value(&[]);
        assert_eq!(binary, 1);
        let expected = y.gt(0.0).to_kind(Kind::Float);
        assert_eq!(z, expected);
    }

    #[test]
    fn train_gates_pass_gradients() {
        let y = Tensor::randn([16, 8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let z = gates_from_logits(&y, GateMode::Train);
        z.sum(Kind::Float).backward();
        let grad = y.grad();
        assert!(grad.abs().sum(Kind::Float).double_value(&[]) > 0.0, "no gradient reached logits");
        // Values are in [0, 1] and roughly half are exactly 0 or 1 (the hard half).
        assert!(z.min().double_value(&[]) >= 0.0 && z.max().double_value(&[]) <= 1.0);
    }

    #[test]
    fn eval_gates_block_gradients_but_surrogate_passes_them() {
        let y = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let z = gates_from_logits(&y, GateMode::Eval);
        assert!(!z.requires_grad(), "hard gates must not carry a gradient");
        let s = gates_from_logits(&y, GateMode::EvalSurrogate);
        assert_eq!(s, gates_from_logits(&y.detach(), GateMode::Eval));
        s.sum(Kind::Float).backward();
        let expected: Tensor = y.sigmoid() * (y.sigmoid().neg() + 1.0);
        assert!(y.grad().allclose(&expected.detach(), 1e-6, 1e-6, false));
    }
}
