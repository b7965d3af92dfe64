"""Version of the tlearn Python package: the libtlearn release it binds (meson.build's
project version; tests/python checks that they agree and that the loaded library
reports the same through tlearn_version_string())."""
__version__ = "1.1.0"
