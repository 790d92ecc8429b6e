"""The generation loop: schedule, sampler, streaming decode and video writing."""
