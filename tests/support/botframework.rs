//! Fake Bot Framework identity provider (OpenID metadata + JWKS) and token minting.
