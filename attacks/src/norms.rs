use tch::{Kind, Tensor};

/// Per-sample L-infinity norm `[N]` of a batch `[N, ...]`.
pub fn linf_norms(delta: &Tensor) -> Tensor {
    delta.flatten(1, -1).abs().amax([1i64].as_slice(), false)
}

/// Per-sample L2 norm `[N]` of a batch `[N, ...]`.
pub fn l2_norms(delta: &Tensor) -> Tensor {
    delta.flatten(1, -1).norm_scalaropt_dim(2, [1i64].as_slice(), false).to_kind(Kind::Float)
}

/// Reshapes per-sample values `[N]` to broadcast over `[N, ...]` of `like`.
pub(crate) fn per_sample(values: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![like.size()[0]];
    shape.extend(std::iter::repeat(1).take(like.dim() - 1));
    values.view(shape.as_slice())
}
