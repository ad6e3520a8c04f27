//! Size limits chosen on purpose and shared by both ends of every gRPC
//! stream, so what one side may send the other may receive.

/// Largest gRPC message either end accepts or sends (tonic's default is
/// 4 MiB for decoding, unbounded for encoding).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Largest one task may be, encoded (its command, environment, health
/// check…): what a spec may ask for, checked at submission and by the
/// master.
pub const MAX_TASK_BYTES: usize = 4 << 20;

/// What a framework packs into one accept at most: more tasks go in the
/// next accept (and the next offer). Well under [`MAX_MESSAGE_BYTES`].
pub const MAX_ACCEPT_TASK_BYTES: usize = 8 << 20;
