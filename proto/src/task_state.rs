//! Task state helpers.

use crate::v1::TaskState;

/// Whether a task in `state` will never run again (Mesos's `isTerminalState`).
/// `TASK_UNREACHABLE` is not terminal: the agent may come back.
pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::TaskFinished
            | TaskState::TaskFailed
            | TaskState::TaskKilled
            | TaskState::TaskLost
            | TaskState::TaskError
            | TaskState::TaskDropped
            | TaskState::TaskGone
            | TaskState::TaskGoneByOperator
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_not_terminal_but_finished_is() {
        assert!(!is_terminal(TaskState::TaskUnreachable));
        assert!(!is_terminal(TaskState::TaskRunning));
        assert!(is_terminal(TaskState::TaskFinished));
        assert!(is_terminal(TaskState::TaskKilled));
    }
}
