"""Fakes for what lies outside the machine (Feishu Open API, ...), speaking the real wire protocols."""
