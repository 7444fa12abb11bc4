//! The server's limits, set on purpose and reported by `GetInfo`.

/// Bounds on what one request may ask and on the queue.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Images in one Screen request (or one ScreenStream message, or ModelInfer).
    pub max_images_per_request: usize,
    /// Images the worker screens in one forward pass (dynamic batching).
    pub max_batch: usize,
    /// How long the worker waits for more requests to fill a batch.
    pub max_delay_ms: u64,
    /// Requests waiting for the screening worker; beyond it: RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Images the screening worker may hold, queued or computing (4 bytes x 784 each); beyond
    /// it: RESOURCE_EXHAUSTED. Bounds the queue's memory whatever the request sizes.
    pub max_queued_images: usize,
    /// Images in one GenerateAttack request.
    pub max_attack_images: usize,
    /// Iterations of one attack (C&W: steps x search steps).
    pub max_attack_steps: usize,
    /// Largest message decoded or encoded (bytes). 1,024 float32 images take 3.2 MB. Also
    /// what bounds the memory a request costs: decoding grows numbers at most 8-fold (and the
    /// codec bounds the count of everything else), so a request costs at most 9 times this.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_images_per_request: 1024,
            max_batch: 128,
            max_delay_ms: 5,
            queue_capacity: 256,
            max_queued_images: 16_384,
            max_attack_images: 256,
            max_attack_steps: 1000,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}
