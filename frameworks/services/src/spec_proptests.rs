//! Property tests: app specs from anyone never panic the parser.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_text_is_parsed_or_refused(text in "\\PC{0,200}") {
        let _ = crate::spec::parse(&text);
    }

    #[test]
    fn app_shaped_toml_is_parsed_or_refused(
        id in "[a-z0-9/._-]{0,12}",
        instances in "-?[0-9.e+]{1,8}",
        cpus in "[0-9.e+-]{1,10}|nan|inf",
        grace in "[0-9.e+-]{1,12}(ms|s|m|h)?",
        port in "[a-z]{0,6}",
        check in "http|tcp|command|[a-z]{0,4}",
    ) {
        let text = format!(
            "id = \"{id}\"\ncmd = \"serve\"\ninstances = {instances}\ncpus = {cpus}\nports = [\"{port}\"]\n[health]\nprotocol = \"{check}\"\nport = \"{port}\"\ngrace = \"{grace}\"\n"
        );
        let _ = crate::spec::parse(&text);
    }
}
