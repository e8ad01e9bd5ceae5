"""TokenTrim in other projects' loops: a diffusers modular block (`modular`). Imports tokentrim_core only
(plus the library it integrates with); recipes for hand-written loops are in docs/integrations.md."""
