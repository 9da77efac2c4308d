//! Compile tests of the derives: `ui/pass` must compile, `ui/fail` must fail with the
//! errors in the `.stderr` beside each case (regenerate with `TRYBUILD=overwrite`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
