"""Structure-aware chunking: the document's own blocks, headings as context, exact spans."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.rag.chunking import ChunkingPolicy, chunk_document, with_context
from edge_agent.rag.text import normalize_text, token_spans

MAN_PAGE = normalize_text("""
SSH_CONFIG(5)               BSD File Formats Manual              SSH_CONFIG(5)

DESCRIPTION
     ssh(1) obtains configuration data from the following sources in the
     following order:

     BatchMode
             If set to yes, user interaction such as password prompts and host
             key confirmation requests will be disabled.

     BindAddress
             Use the specified address on the local machine as the source
             address of the connection.

FILES
     ~/.ssh/config
             This is the per-user configuration file.
""")

MARKDOWN = normalize_text("""
Getting Started

pip install python-dotenv

If your application takes its configuration from environment variables, like a
12-factor application, launching it in development is not very practical.

Variable expansion

python-dotenv can interpolate variables using POSIX variable expansion.

- Value of that variable in the .env file.
- Value of that variable in the environment.
""")


def test_each_option_entry_of_a_man_page_is_its_own_chunk() -> None:
    chunks = chunk_document(MAN_PAGE, ChunkingPolicy(max_tokens=120))
    firsts = [c.text.split("\n", 1)[0] for c in chunks]
    assert "BatchMode" in firsts and "BindAddress" in firsts
    batch = next(c for c in chunks if c.text.startswith("BatchMode"))
    assert "BindAddress" not in batch.text
    assert batch.context == "DESCRIPTION"


def test_a_section_heading_opens_the_chunk_under_it_and_is_context_for_later_ones() -> None:
    chunks = chunk_document(MAN_PAGE, ChunkingPolicy(max_tokens=120))
    files = next(c for c in chunks if "per-user configuration file" in c.text)
    assert files.text.startswith("FILES\n") or files.context == "FILES"
    assert with_context(files, "ssh_config.5").startswith("ssh_config.5")


def test_markdown_headings_become_the_context_of_the_blocks_under_them() -> None:
    chunks = chunk_document(MARKDOWN, ChunkingPolicy(max_tokens=20, overlap_tokens=4))
    listed = [c for c in chunks if "Value of that variable" in c.text]
    assert listed and all(
        c.context == "Variable expansion" or c.text.startswith("Variable expansion") for c in listed
    )
    assert not any("pip install" in c.text and "POSIX" in c.text for c in chunks)


def test_a_block_larger_than_a_unit_is_split_by_windows() -> None:
    para = " ".join(f"word{i}" for i in range(300)) + "."
    text = normalize_text(f"Heading here\n\n{para}")
    chunks = chunk_document(text, ChunkingPolicy(max_tokens=50, overlap_tokens=10))
    assert len(chunks) > 5
    assert all(len(token_spans(c.text)) <= 50 for c in chunks)
    assert {c.context for c in chunks[1:]} == {"Heading here"}


def test_the_window_method_is_the_old_chunker() -> None:
    chunks = chunk_document(
        MAN_PAGE, ChunkingPolicy(max_tokens=40, overlap_tokens=8, method="window")
    )
    assert all(c.context == "" for c in chunks)
    assert "BatchMode" in chunks[0].text + chunks[1].text


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab C.:-|\n "), max_size=400), st.integers(8, 40))
def test_any_text_chunks_into_exact_spans_that_cover_every_token(raw: str, max_tokens: int) -> None:
    text = normalize_text(raw)
    chunks = chunk_document(text, ChunkingPolicy(max_tokens=max_tokens, overlap_tokens=2))
    covered = set()
    for c in chunks:
        assert text[c.start : c.end] == c.text
        covered |= {s for s in token_spans(text) if c.start <= s[0] and s[1] <= c.end}
    wordy = {s for s in token_spans(text) if any(ch.isalnum() for ch in text[s[0] : s[1]])}
    assert wordy <= covered
