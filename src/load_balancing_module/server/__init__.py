"""The reverse-proxy server built on the library: config loading, data plane, admin."""
