import pytest
import torch

from nexttoken.errors import UserError
from nexttoken.instruct.corpus import INSTRUCTION, RESPONSE, demonstrations, make_corpus
from nexttoken.instruct.tokenizer import EOS, PAD, BPETokenizer, train_tokenizer
from nexttoken.instruct.world import make_world

WORLD = make_world(0)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(make_corpus(WORLD, n_chars=60_000, seed=0).train, vocab_size=1000)


def test_round_trip_of_pages_chat_turns_and_unseen_bytes(tok):
    texts = [*make_corpus(WORLD, n_chars=5_000, seed=3).train,
             *(d.prompt + d.response for d in demonstrations(WORLD, 20, seed=0)),
             "naïve café, ☃ and \t tabs\n\n  spaces", ""]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("a frog", eos=True) + [tok.pad_id, -1]) == "a frog"
    assert tok.decode(tok.encode("a frog", eos=True), stop_at_eos=False) == f"a frog{EOS}"


def test_special_tokens_are_single_and_pad_is_not_eos(tok):
    assert tok.pad_id != tok.eos_id
    assert [tok.pad_id, tok.eos_id, tok.instruction_id, tok.response_id] == [0, 1, 2, 3]
    prompt = tok.encode(f"{INSTRUCTION}\nName two towns.\n{RESPONSE}\n")
    assert prompt[0] == tok.instruction_id and prompt.count(tok.response_id) == 1
    assert tok.encode(f"x{PAD}y").count(tok.pad_id) == 1
    assert 300 < tok.vocab_size <= 1000


def test_numbers_are_split_into_digits(tok):
    pieces = [tok.tokenizer.id_to_token(i) for i in tok.encode("What is 36 + 148?")]
    assert {"3", "6", "1", "4", "8"} <= set(pieces) and not any(p.strip("Ġ").isdigit() and len(p.strip("Ġ")) > 1
                                                                for p in pieces)


def test_batches_are_left_padded_with_a_mask(tok):
    texts = ["What is 2 + 3?", "Write a short poem about a wise frog.", "Hi"]
    batch = tok.encode_batch(texts, eos=True)
    lengths = [len(tok.encode(t)) + 1 for t in texts]
    assert batch.ids.shape == batch.mask.shape == (3, max(lengths))
    assert batch.mask.sum(1).tolist() == lengths and batch.mask[:, -1].all()
    for row, mask, text, n in zip(batch.ids, batch.mask, texts, lengths):
        assert mask.tolist() == [0] * (len(mask) - n) + [1] * n
        assert (row[mask == 0] == tok.pad_id).all() and row[-1] == tok.eos_id
        assert row[mask == 1].tolist() == tok.encode(text, eos=True)
    short = tok.encode_batch(texts, max_len=4)
    assert short.ids.shape[1] == 4 and short.ids[1].tolist() == tok.encode(texts[1])[-4:]
    assert short.ids.dtype == short.mask.dtype == torch.long
    with pytest.raises(UserError):
        tok.encode_batch([])


def test_saved_tokenizer_loads_the_same(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = BPETokenizer.load(path)
    text = "Belne has 4 apples. How many apples does Belne have now?"
    assert again.encode(text) == tok.encode(text) and again.pad_id == tok.pad_id and again.eos_id == tok.eos_id
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(UserError, match="no tokenizer"):
        BPETokenizer.load(tmp_path / "missing.json")
    with pytest.raises(UserError, match="256 bytes"):
        train_tokenizer(["a"], vocab_size=100)


@pytest.mark.parametrize("content, message", [(b"{not json", r"is not a tokenizer.json \(key must be a string"),
                                              (b"{}", "is not a tokenizer.json"),
                                              (b"\xff", "is not UTF-8 text"),
                                              (None, "is a folder")])
def test_a_damaged_tokenizer_file_is_a_user_error_naming_it(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.mkdir() if content is None else path.write_bytes(content)
    with pytest.raises(UserError, match=message) as e:
        BPETokenizer.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
