"""Producers: dataset adapters, the synthetic H&M-layout generator, the replay producer."""
