//! `/api/v1/events`: cluster events as server-sent events, gathered into
//! pieces, with a count of what a client that fell behind missed.

use super::*;

/// Most event streams open at once: each holds a connection and a share of
/// every event.
pub(super) const MAX_EVENT_STREAMS: usize = 1024;

/// The kinds of event a stream asked for (`?types=a,b`): all of them
/// without the parameter.
pub(super) fn event_types(
    params: &HashMap<String, String>,
) -> Result<Option<std::collections::HashSet<&'static str>>, Response> {
    if let Some(key) = params.keys().find(|k| k.as_str() != "types") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown parameter `{key}` (use types)"),
        ));
    }
    let Some(types) = params.get("types") else {
        return Ok(None);
    };
    let mut wanted = std::collections::HashSet::new();
    for name in types.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match crate::events::EVENT_NAMES
            .iter()
            .find(|known| **known == name)
        {
            Some(known) => wanted.insert(*known),
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "parameter `types`: `{name}` is not an event type (use {})",
                        crate::events::EVENT_NAMES.join(", ")
                    ),
                ));
            }
        };
    }
    if wanted.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "parameter `types`: name at least one event type".to_string(),
        ));
    }
    Ok(Some(wanted))
}

/// Server-sent events, every kind or those `?types=` names. A stream
/// without `task_updated` (the web UI's) costs the master nothing per
/// task.
pub(super) async fn event_stream(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let types = match event_types(&params) {
        Ok(types) => types,
        Err(response) => return response,
    };
    if !Sight::of(&api, caller.clone()).everything {
        // Events are not filtered per reader: they are for those who may
        // see every framework and task.
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "principal `{}` may not follow the event stream: it needs view_frameworks and view_tasks on every framework principal",
                caller.name()
            ),
        );
    }
    if api.events.streams() >= MAX_EVENT_STREAMS {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} event streams are open already; try again later"),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let task_updates = types.as_ref().is_none_or(|t| t.contains("task_updated"));
    tokio::spawn(forward_events(
        api.events.subscribe(task_updates),
        types,
        tx,
    ));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// Most bytes of events handed to a connection at once.
pub(super) const EVENT_BATCH: usize = 64 * 1024;

/// How long a stream gathers events after writing some before it writes
/// again: a launch burst is tens of thousands of events a second, and a
/// stream that woke for each few of them cost the master a write and a
/// wake-up each (and its client as many reads). Events wait at most this
/// much longer.
pub(super) const EVENT_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// A comment goes out after this long without events, so clients and
/// proxies keep the connection.
pub(super) const EVENT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Writes server-sent events from `events` to a client, the events
/// waiting as one piece: written one by one, as their own frames, a
/// client fell behind a launch burst and lost half of it. After a piece
/// that took all that waited, the stream gathers for [`EVENT_GATHER`].
/// Ends when the client goes away.
pub(super) async fn forward_events(
    mut events: broadcast::Receiver<Arc<Event>>,
    types: Option<std::collections::HashSet<&'static str>>,
    client: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, Infallible>>,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let wanted = |event: &Event| types.as_ref().is_none_or(|t| t.contains(event.name()));
    loop {
        let mut out = Vec::new();
        match tokio::time::timeout(EVENT_KEEP_ALIVE, events.recv()).await {
            Err(_) => out.extend_from_slice(b":\n\n"),
            Ok(Err(RecvError::Closed)) => return,
            Ok(Err(RecvError::Lagged(n))) => write_lagged(&mut out, n),
            Ok(Ok(event)) if wanted(&event) => write_event(&mut out, &event),
            Ok(Ok(_)) => continue,
        }
        let mut drained = false;
        while out.len() < EVENT_BATCH {
            match events.try_recv() {
                Ok(event) if wanted(&event) => write_event(&mut out, &event),
                Ok(_) => {}
                Err(TryRecvError::Lagged(n)) => write_lagged(&mut out, n),
                // Closed shows at the next wait.
                Err(TryRecvError::Empty | TryRecvError::Closed) => {
                    drained = true;
                    break;
                }
            }
        }
        if client.send(Ok(out.into())).await.is_err() {
            return;
        }
        if drained {
            tokio::time::sleep(EVENT_GATHER).await;
        }
    }
}

/// One event in the SSE format: its name, then its JSON on one line
/// (compact JSON escapes every newline).
pub(super) fn write_event(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(event.json().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Tells a client how many events it missed by falling behind.
pub(super) fn write_lagged(out: &mut Vec<u8>, missed: u64) {
    out.extend_from_slice(
        format!("event: lagged\ndata: {missed} events were dropped; re-read /api/v1/state\n\n")
            .as_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_event(n: usize) -> Event {
        Event::task_updated(
            "f",
            &format!("t{n}"),
            "a",
            "TASK_RUNNING",
            "line one\nline two",
        )
    }

    /// The events in an SSE text, as (name, JSON).
    fn parse_sse(text: &str) -> Vec<(String, serde_json::Value)> {
        text.split("\n\n")
            .filter(|e| !e.is_empty() && !e.starts_with(':'))
            .map(|e| {
                let lines: Vec<&str> = e.lines().collect();
                assert_eq!(lines.len(), 2, "an event and one data line: {e:?}");
                let name = lines[0].strip_prefix("event: ").expect("event line");
                let data = lines[1].strip_prefix("data: ").expect("data line");
                let value = serde_json::from_str(data).unwrap_or_else(|_| json!(data));
                (name.to_string(), value)
            })
            .collect()
    }

    /// What a client following a stream with room for `room` events gets
    /// first, when `sent` events were sent before it started reading.
    async fn first_piece_after(room: usize, sent: usize) -> Vec<(String, serde_json::Value)> {
        let (events, listener) = broadcast::channel(room);
        for n in 0..sent {
            events.send(Arc::new(task_event(n))).expect("a listener");
        }
        let (tx, mut client) = tokio::sync::mpsc::channel(2);
        tokio::spawn(forward_events(listener, None, tx));
        let piece = client.recv().await.expect("a piece").expect("bytes");
        parse_sse(std::str::from_utf8(&piece).expect("text"))
    }

    #[tokio::test]
    async fn events_waiting_go_out_together_one_line_of_json_each() {
        let got = first_piece_after(16, 3).await;
        assert_eq!(got.len(), 3, "all three in one piece");
        for (n, (name, data)) in got.iter().enumerate() {
            assert_eq!(name, "task_updated");
            assert_eq!(data["task_id"], format!("t{n}"));
            assert_eq!(data["message"], "line one\nline two");
        }
    }

    #[tokio::test]
    async fn a_client_that_fell_behind_is_told_how_many_events_it_missed() {
        let got = first_piece_after(4, 10).await;
        assert_eq!(got[0].0, "lagged");
        assert!(
            got[0]
                .1
                .as_str()
                .expect("text")
                .starts_with("6 events were dropped"),
            "{:?}",
            got[0].1
        );
        let kept: Vec<&serde_json::Value> = got[1..].iter().map(|(_, d)| &d["task_id"]).collect();
        assert_eq!(kept, ["t6", "t7", "t8", "t9"]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_piece_a_stream_gathers_events_before_writing_again() {
        let (events, listener) = broadcast::channel(16);
        let (tx, mut client) = tokio::sync::mpsc::channel(2);
        tokio::spawn(forward_events(listener, None, tx));
        events.send(Arc::new(task_event(0))).expect("a listener");
        let first = client.recv().await.expect("a piece").expect("bytes");
        assert_eq!(
            parse_sse(std::str::from_utf8(&first).expect("text")).len(),
            1
        );
        // An event, time for the stream to run (it would write this one
        // alone if it did not gather), then another.
        events.send(Arc::new(task_event(1))).expect("a listener");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        events.send(Arc::new(task_event(2))).expect("a listener");
        let started = tokio::time::Instant::now();
        let second = client.recv().await.expect("a piece").expect("bytes");
        let got = parse_sse(std::str::from_utf8(&second).expect("text"));
        let ids: Vec<&serde_json::Value> = got.iter().map(|(_, d)| &d["task_id"]).collect();
        assert_eq!(ids, ["t1", "t2"], "both in one piece");
        assert!(started.elapsed() <= EVENT_GATHER, "written once gathered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_sends_keep_alives_and_ends_with_its_client() {
        let (events, listener) = broadcast::channel(4);
        let (tx, mut client) = tokio::sync::mpsc::channel(2);
        let forwarding = tokio::spawn(forward_events(listener, None, tx));
        let piece = client.recv().await.expect("a piece").expect("bytes");
        assert_eq!(&piece[..], b":\n\n", "a comment after {EVENT_KEEP_ALIVE:?}");
        drop(client);
        events.send(Arc::new(task_event(0))).expect("a listener");
        forwarding.await.expect("the forwarder ended");
    }
}
