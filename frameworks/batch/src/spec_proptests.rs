//! Property tests: job specs from anyone never panic the parser.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_text_is_parsed_or_refused(text in "\\PC{0,200}") {
        let _ = crate::spec::parse(&text);
    }

    #[test]
    fn job_shaped_toml_is_parsed_or_refused(
        id in "[a-z0-9-]{0,10}",
        cpus in "[0-9.e+-]{1,10}|nan|inf|-inf",
        timeout in "[0-9.e+-]{1,12}(ms|s|m|h)?",
        backoff in "[0-9.e+-]{1,12}(ms|s|m|h)?",
        schedule in "[0-9*/, -]{0,20}",
        constraint in "[a-z]{0,6}",
        op in "IS|LIKE|UNLIKE|UNIQUE|CLUSTER|GROUP_BY|MAX_PER|[A-Z]{0,5}",
        value in "[a-z0-9.*(]{0,6}",
    ) {
        let text = format!(
            "[[job]]\nid = \"{id}\"\ncmd = \"true\"\ncpus = {cpus}\ntimeout = \"{timeout}\"\nbackoff = \"{backoff}\"\nschedule = \"{schedule}\"\nconstraints = [[\"{constraint}\", \"{op}\", \"{value}\"]]\n"
        );
        let _ = crate::spec::parse(&text);
    }

    #[test]
    fn object_shaped_json_is_parsed_or_refused(
        text in "\\{(\"[a-z_]{1,12}\": ?(\"[^\"]{0,8}\"|-?[0-9.e]{1,8}|true|null|\\[\\]|\\{\\}), ?){0,6}\\}"
    ) {
        let _ = crate::spec::parse(&text);
    }
}
