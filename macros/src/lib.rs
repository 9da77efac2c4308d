//! Derive macros for steadfast: `#[derive(Message)]` binds a type to its topic, key, version
//! and id fields; `#[derive(Handler)]` binds a handler to its message type and group.

use proc_macro::TokenStream;

/// Implements `steadfast::Message`. (Filled in next.)
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Implements `steadfast::Handler`. (Filled in next.)
#[proc_macro_derive(Handler, attributes(handler))]
pub fn derive_handler(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
