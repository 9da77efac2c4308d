// The documentation is in docs/*.md. Its examples run as doc tests of the steadfast crate
// (src/lib.rs): run here they would need steadfast as a dev-dependency, which a proc-macro
// crate's tests get as a second build of steadfast and everything under it; so the doc tests
// of this crate (`cfg(doctest)`) see no documentation.
#![cfg_attr(not(doctest), doc = include_str!("../docs/crate.md"))]

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

mod handler;
mod message;

#[cfg_attr(not(doctest), doc = include_str!("../docs/message.md"))]
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    message::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[cfg_attr(not(doctest), doc = include_str!("../docs/handler.md"))]
#[proc_macro_derive(Handler, attributes(handler))]
pub fn derive_handler(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    handler::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
