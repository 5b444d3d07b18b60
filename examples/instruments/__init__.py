"""Instrument scripts ported from the seeds (HALion and HISE examples)."""
