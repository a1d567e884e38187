"""aer's Hydra configs: importable as `aer.conf` (`pkg://aer.conf`) through the aer/conf link."""
