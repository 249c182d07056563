//! The macros' compile-time errors and accepted forms (trybuild). The `.stderr` files are pinned
//! to the stable compiler; regenerate them with `TRYBUILD=overwrite` and read every diff.

#[test]
fn misuse_is_a_compile_error_at_the_offending_tokens() {
    trybuild::TestCases::new().compile_fail("ui/**/*.rs");
}

#[test]
fn accepted_forms_compile_and_run() {
    trybuild::TestCases::new().pass("pass/*.rs");
}
