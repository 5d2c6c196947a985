"""A customer as a CRM describes it (`POST /v1/customers:batch`, `vicino customers import`):
its id, identifiers, consent, locale and country, judged item by item. Pure: what is valid, in
its one stored form, or every reason it is not."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError

from vicino.services.kernel.contracts.customer_state import CONSENT_FIELDS
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.problems import describe_validation_errors

from .identity import IdentifierError, normalise_identifier
from .locales import LocaleError, canonical_country, canonical_locale

MAX_CUSTOMER_BATCH = 1000
MAX_IDENTIFIERS_PER_CUSTOMER = 20
ATTRIBUTE_FIELDS = ("locale", "country")  # what the attributes hash keeps besides updated_at


class CustomerIdentifierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="device, loyalty_card, email, email_sha256, phone, phone_sha256 or cookie "
                                  "(an e-mail address or phone number is kept only as its SHA-256)")
    value: str


class ConsentPurposesIn(BaseModel):
    """The purposes to set (geo keeps consent); one left out keeps its current value."""
    model_config = ConfigDict(extra="forbid")

    location: StrictBool | None = None
    marketing: StrictBool | None = None
    personalisation: StrictBool | None = None


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[str, StringConstraints(pattern=CLIENT_ID_PATTERN)]
    identifiers: list[CustomerIdentifierIn] = Field(default_factory=list, max_length=MAX_IDENTIFIERS_PER_CUSTOMER)
    consent: ConsentPurposesIn | None = None
    locale: str | None = Field(None, description="BCP 47 language tag (\"it-IT\", \"en\"), kept in canonical form")
    country: str | None = Field(None, description="ISO 3166-1 alpha-2 (\"IT\")")


class CustomerBatchIn(BaseModel):
    """Each customer is judged alone: a bad one is rejected with its reasons, the others are kept."""
    customers: list[CustomerIn] = Field(min_length=1, max_length=MAX_CUSTOMER_BATCH)


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    customer_id: str
    identifiers: tuple[str, ...]        # "kind:value", normalised, without repeats
    consent: dict[str, bool]            # the purposes to set; empty: consent untouched
    attributes: dict[str, str]          # locale and/or country to set; empty: untouched


def judge_customer(raw: object) -> CustomerRecord | list[dict]:
    """The item as a record, or its errors ([{field, message}], every one found)."""
    if not isinstance(raw, dict):
        return [{"field": "", "message": "a customer is a JSON object"}]
    try:
        item = CustomerIn.model_validate(raw)
    except ValidationError as e:
        return describe_validation_errors(list(e.errors()))[1]
    errors: list[dict] = []
    identifiers: list[str] = []
    for n, ident in enumerate(item.identifiers):
        try:
            identifiers.append(normalise_identifier(ident.kind, ident.value))
        except IdentifierError as e:
            errors.append({"field": f"identifiers.{n}", "message": str(e)})
    attributes: dict[str, str] = {}
    for name, check in (("locale", canonical_locale), ("country", canonical_country)):
        value = getattr(item, name)
        if value is not None:
            try:
                attributes[name] = check(value)
            except LocaleError as e:
                errors.append({"field": name, "message": str(e)})
    consent = {} if item.consent is None else item.consent.model_dump(exclude_none=True)
    if item.consent is not None and not consent:
        errors.append({"field": "consent", "message": f"names no purpose ({', '.join(CONSENT_FIELDS)})"})
    if errors:
        return errors
    return CustomerRecord(item.customer_id, tuple(dict.fromkeys(identifiers)), consent, attributes)


def batch_items(body: object) -> list:
    """The `customers` of a batch body, or ValueError saying why the whole batch is refused."""
    if not isinstance(body, dict) or not isinstance(body.get("customers"), list):
        raise ValueError('expected {"customers": [{"customer_id": ..., "identifiers": [...], ...}, ...]}')
    extra = sorted(set(body) - {"customers"})
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(extra)}; the body is {{\"customers\": [...]}}")
    items = body["customers"]
    if not 1 <= len(items) <= MAX_CUSTOMER_BATCH:
        raise ValueError(f"customers: {len(items):,} items; a batch holds 1 to {MAX_CUSTOMER_BATCH:,}")
    return items
