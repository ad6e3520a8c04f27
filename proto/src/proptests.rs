//! Property tests: parsers of what users and the network send never panic,
//! and what they accept means what it says.

use crate::{Resources, parse_duration};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn resources_parse_never_panics(text in "\\PC{0,80}") {
        let _ = Resources::parse(&text);
    }

    #[test]
    fn resources_shaped_text_never_panics(
        text in "([a-z]{1,5}:([0-9.e+-]{1,12}|\\[[0-9]{0,6}(-[0-9]{0,6})?(,[0-9]{0,6}(-[0-9]{0,6})?)*\\]);?){0,5}"
    ) {
        let _ = Resources::parse(&text);
    }

    #[test]
    fn parsed_resources_print_back_to_themselves(
        cpus in 0.01f64..1e4, mem in 1.0f64..1e7, low in 1u64..60000, len in 0u64..1000
    ) {
        let text = format!("cpus:{cpus};mem:{mem};ports:[{low}-{}]", low + len);
        let parsed = Resources::parse(&text).expect("valid");
        let again = Resources::parse(&parsed.to_string()).expect("printed form parses");
        prop_assert_eq!(parsed, again);
    }

    #[test]
    fn durations_never_panic(text in "\\PC{0,30}") {
        let _ = parse_duration(&text);
    }

    #[test]
    fn number_shaped_durations_are_bounded(text in "[0-9.e+-]{1,25}(ms|s|m|h|d)?") {
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(d.as_secs() <= 10 * 366 * 24 * 3600, "{text} → {d:?}");
        }
    }
}
