"""``create_model`` names a misspelled keyword with its near matches and the valid ones, which come from the
factory's and the network class's signatures."""

import inspect

import pytest

from mambaseg.models import create_model, list_models
from mambaseg.models.registry import UnknownModelKwargError, model_info, model_kwarg_names


@pytest.mark.parametrize("name", list_models())
def test_valid_keywords_are_the_constructor_keywords(name):
    fixed = {"self", "in_channels", "num_classes", "pretrained"}
    factory = model_info(name).factory
    cls = factory.__globals__[inspect.signature(factory).return_annotation]
    expected = {p for p in inspect.signature(cls.__init__).parameters if p not in fixed}
    expected |= {p for p, v in inspect.signature(factory).parameters.items()
                 if p not in fixed and v.kind is not v.VAR_KEYWORD}
    assert set(model_kwarg_names(name)) == expected


def test_misspelled_keyword_is_named_with_near_matches():
    with pytest.raises(UnknownModelKwargError, match=r"no keyword 'base_chanels'; did you mean 'base_channels'\? "
                                                     r"Valid keywords: base_channels, upsample"):
        create_model("unet", base_chanels=4)
    with pytest.raises(TypeError):  # still a TypeError, as the unchecked call raised
        create_model("vmunet", depht=[1, 1, 1, 1])
