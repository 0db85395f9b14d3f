"""Inference: decoding algorithms over the KV cache (`decoding`, `sampling`, `beam_search`), the
`trainer.infer` library (`infer`) and the speed benchmark (`benchmark`)."""
