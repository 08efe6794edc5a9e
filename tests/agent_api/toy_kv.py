"""What every toy backend of the batching tests shares: one "KV cache" per sequence, the
list of tokens at positions 0..n-1, saved, restored and cut like llama.cpp's sequences."""

from __future__ import annotations

from edge_agent.runtime.batching import GenerationParams

END = 0


class ToyKV:
    def __init__(self, slots: int) -> None:
        self.kv: list[list[int]] = [[] for _ in range(slots)]

    def new_sampler(self, seq_id: int, params: GenerationParams) -> None:
        pass

    def truncate(self, seq_id: int, keep: int) -> None:
        del self.kv[seq_id][keep:]

    def save(self, seq_id: int) -> bytes:
        return bytes(self.kv[seq_id])

    def restore(self, seq_id: int, state: bytes) -> bool:
        self.kv[seq_id] = list(state)
        return True

    def token_bytes(self, token: int) -> bytes:
        return f"<{token}>".encode()

    def is_end(self, token: int) -> bool:
        return token == END
